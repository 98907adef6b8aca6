"""The one-image trainer's run: flow-matching velocity loss at the phase's sigmas, on the host's sampling path.

Each step draws one of the phase's sigmas, fresh noise and (with ``caption_dropout``) the all-zero caption, and
trains on MSE(v_pred, noise - x0), every prediction going through ``comfy.samplers.calc_cond_batch`` ->
``apply_model`` inside the shared run session (training/session.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import comfy.samplers
import torch

from . import memory
from .session import Session, clone_tensors, open_session, run_in_sampling, train_adapter
from .recipes import flow_time
from .settings import TrainSettings


@dataclass
class TrainResult:
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (down [r,in], up [out,r]), fp32 CPU
    losses: list[float] = field(default_factory=list)
    sigmas_used: list[float] = field(default_factory=list)
    optimizer: str = ""
    precision: str = ""
    memory: memory.MemoryEstimate | None = None


def zeroed(conditioning: list) -> list:
    """The dropped caption: all-zero embeddings, as the host's ConditioningZeroOut makes them."""
    out = []
    for cond, extras in conditioning:
        extras = dict(extras)
        if isinstance(extras.get("pooled_output"), torch.Tensor):
            extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
        out.append([torch.zeros_like(cond), extras])
    return out


class _TrainGuider(comfy.samplers.CFGGuider):
    """The host's guider, so model loading and conditioning follow the sampling path; cfg 1, no negative."""

    def set_training_conds(self, positive, dropped):
        self.inner_set_conds({"positive": positive, "dropped": dropped})


class FlowMatchingStep:
    """One training step's loss, with what the run has drawn so far (its sigmas); made per run."""

    def __init__(self, session: Session, guider, x0: torch.Tensor, model_options: dict):
        s = session.settings
        self.session, self.guider, self.model_options = session, guider, model_options
        self.x0 = x0.float()
        self.sigma_table = torch.tensor(s.sigmas, dtype=torch.float32)
        self.gen = torch.Generator().manual_seed(s.seed)
        self.view = (-1,) + (1,) * (self.x0.ndim - 1)
        self.sigmas_used: list[float] = []

    def __call__(self, step: int) -> torch.Tensor:
        s, device, x0 = self.session.settings, self.session.device, self.x0
        index = int(torch.randint(len(s.sigmas), (1,), generator=self.gen))
        noise = torch.randn(x0.shape, generator=self.gen, dtype=torch.float32).to(device)
        drop = float(torch.rand((), generator=self.gen)) < s.caption_dropout
        sigma = self.sigma_table[index].expand(x0.shape[0]).to(device)
        ms = self.guider.inner_model.model_sampling
        # The noisy latent as the host's sampler makes it (x_t = (1 - sigma) x0 + sigma noise for rectified-flow
        # models; x0 + sigma noise for Cosmos, whose network sees x / (1 + sigma)).
        x_t = ms.noise_scaling(sigma, noise, x0)
        with self.session.precision.autocast_context(device):
            denoised = comfy.samplers.calc_cond_batch(self.guider.inner_model, [self.guider.conds["dropped" if drop else "positive"]],
                                                      x_t, sigma, self.model_options)[0]
        self.sigmas_used.append(float(self.sigma_table[index]))
        # The velocity loss: for a flow model at flow time t, denoised = x_t - t * v_pred, so the network's velocity
        # error v_pred - (noise - x0) is exactly (x0 - denoised) / t.
        t = flow_time(ms, sigma).view(self.view)
        return torch.mean(((x0 - denoised.float()) / t) ** 2)


def train_lora(patcher, latent: torch.Tensor, positive: list, settings: TrainSettings, arch: str,
               on_step: Callable[[int, float, float, int], None] | None = None) -> TrainResult:
    """Train one LoRA on ``latent`` (the VAE latent, model layout) with caption ``positive``; nothing is saved here.
    ``on_step(step, loss, sigma, steps)`` is called after each optimiser step."""
    positive = clone_tensors(positive)
    session = open_session(patcher, settings, arch, latent.shape, positive[0][0].shape[1], "trainer")
    result = TrainResult(adapters={}, optimizer=session.optimizer, precision=session.precision.describe(),
                         memory=session.memory)

    def body(guider, x0, model_options):
        stepper = FlowMatchingStep(session, guider, x0, model_options)
        report = None if on_step is None else (
            lambda step, loss: on_step(step, loss, stepper.sigmas_used[-1], settings.steps))
        result.adapters, result.losses = train_adapter(session, settings.seed, stepper, "Training", report)
        result.sigmas_used = stepper.sigmas_used

    guider = _TrainGuider(session.work)
    guider.set_training_conds(positive, zeroed(positive))
    run_in_sampling(session, guider, latent, torch.tensor(settings.sigmas, dtype=torch.float32), body)
    return result
