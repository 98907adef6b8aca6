"""One LoRA training run on the host's sampling path: the session the trainer and the distiller share.

``open_session`` decides, before anything is loaded, the run's clone of the model (outside the host's dynamic-VRAM
path), its LoRA target layers, the device, the precision and the optimiser, and checks the run's memory
(training/memory.py) against the device. ``run_in_sampling`` has the host load the whole model with room for the
training state (inside inference mode, as the executor loads models), then lets the host's guider sample with a
stand-in Sampler whose ``sample`` is the run's body: the model, the conds and the model options are exactly those
of sampling. During the body the base is frozen (adapters.frozen_base) and the blocks are wrapped (blocks.py).
``train_adapter`` trains one set of LoRA terms (adapters.lora_terms) with the caller's loss per step: NaN check,
optimiser step, the adapters copied to the CPU at the end. Afterwards the model has no hook, no trainable flag and
the same tensors as before.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Callable

import comfy.model_management as mm
import comfy.samplers
import torch

from ..host_compat import non_dynamic, training_mode
from . import memory, precision
from .adapters import frozen_base, lora_terms, target_layers
from .blocks import block_lists, trainable_blocks
from .optim import checked_backward, make_optimizer, optimizer_name, optimizer_step
from .settings import LoraSettings

log = logging.getLogger("comfyui-glance")


class NaNLossError(RuntimeError):
    pass


def clone_tensors(obj):
    """Copies of the tensors in a conditioning structure (tensors made under inference mode cannot enter autograd)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tensors(v) for v in obj)
    return obj


def hidden_width(dm: torch.nn.Module, width_module: str | None, targets) -> int:
    if width_module:
        return int(dm.get_submodule(width_module).out_features)
    return int(targets[0][1].in_features)


def caption_tokens_seen(patcher, text_tokens: int, latent_shape) -> int:
    """The caption tokens the model's blocks see for a caption of ``text_tokens``: the model's own conditioning
    (its ``extra_conds``, as the host's sampler prepares it; on the meta device, nothing computed) pads some (Flux.2
    to 512 tokens); the caption's own tokens where it cannot be asked."""
    meta = torch.device("meta")
    try:
        out = patcher.model.extra_conds(cross_attn=torch.zeros((1, int(text_tokens), 1), device=meta),
                                        noise=torch.zeros(tuple(latent_shape), device=meta), device=meta)
        return max(int(text_tokens), int(out["c_crossattn"].cond.shape[1]))
    except Exception:  # a model whose conditioning needs more than the caption and the latent
        return int(text_tokens)


def plan_memory(patcher, targets, settings: LoraSettings, latent_shape, text_tokens: int,
                prec: precision.Precision, optimizer: str) -> memory.MemoryEstimate:
    """The run's memory (training/memory.py) for this model, latent and caption."""
    dm = patcher.model.diffusion_model
    text_tokens = caption_tokens_seen(patcher, text_tokens, latent_shape)
    fallback = max(settings.activation_per_token.values(), default=memory.GENERIC_PER_TOKEN)
    blocks = [memory.BlockList(name, len(mods), settings.activation_per_token.get(name, fallback))
              for name, mods in block_lists(dm, settings.block_lists)]
    return memory.estimate(
        weights=patcher.model_size(), layer_shapes=[(m.in_features, m.out_features) for _, m in targets],
        rank=settings.rank, blocks=blocks,
        tokens=memory.image_tokens(latent_shape, memory.patch_size(dm)) + int(text_tokens),
        width=hidden_width(dm, settings.width_module, targets), activation_bytes=prec.activation_bytes,
        checkpointing=settings.gradient_checkpointing, optimizer_name=optimizer,
    )


@dataclass
class Session:
    """What a run works with: the clone, its target layers, device, precision, optimiser, settings and memory plan."""
    work: object
    targets: list
    device: torch.device
    precision: precision.Precision
    optimizer: str
    settings: LoraSettings
    memory: memory.MemoryEstimate | None = None

    @property
    def dm(self) -> torch.nn.Module:
        return self.work.model.diffusion_model


def open_session(patcher, settings: LoraSettings, arch: str, latent_shape, text_tokens: int, label: str) -> Session:
    """The run's plan, before anything is loaded; an error when the model has no target layer or the run cannot fit
    on the device. ``label`` names the run in the log (e.g. 'trainer')."""
    work = non_dynamic(patcher).clone()
    targets = target_layers(work.model.diffusion_model, settings.target_modules)
    if not targets:
        raise ValueError(f"model: none of the LoRA target modules {list(settings.target_modules)} exist in this {arch} model.")
    device = work.load_device
    session = Session(work=work, targets=targets, device=device, optimizer=optimizer_name(device), settings=settings,
                      precision=precision.choose(device, precision.compute_dtype(work)))
    est = session.memory = plan_memory(work, targets, settings, latent_shape, text_tokens, session.precision,
                                       session.optimizer)
    log.info("Glance %s: %s on %s, %s; %d LoRA layers, %.1fM parameters per adapter; memory: %s", label, arch, device,
             session.precision.describe(), len(targets), est.lora_params / 1e6, memory.breakdown(est))
    memory.check_fits(est, device, mm.get_total_memory(device), mm.extra_reserved_memory())
    return session


class _SessionSampler(comfy.samplers.Sampler):
    """The host's sampling runs this instead of a sampler: ``body(guider, latent, model_options)``."""

    def __init__(self, body: Callable):
        self.body = body

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        self.body(model_wrap, latent_image, extra_args["model_options"])
        return latent_image


def run_in_sampling(session: Session, guider: comfy.samplers.CFGGuider, latent: torch.Tensor, sigmas: torch.Tensor,
                    body: Callable) -> None:
    """Load the whole model, then run ``body(guider, latent, model_options)`` inside ``guider``'s sampling of
    ``latent`` over ``sigmas``, with the base frozen and the blocks wrapped for training."""
    work, est, settings = session.work, session.memory, session.settings
    # A weight moved outside inference mode would keep no version counter, and the shared model could not be sampled
    # afterwards; the guider's own load below finds the model loaded and moves nothing.
    with torch.inference_mode():
        mm.load_models_gpu([work], memory_required=est.training, force_full_load=True)
    memory.check_full_load(work, est, session.device)

    def inside(model_wrap, x0, model_options):
        memory.check_full_load(work, est, session.device)  # the guider's own load must not have offloaded part of it
        with frozen_base(model_wrap.inner_model), \
                trainable_blocks(session.dm, settings.block_lists, settings.gradient_checkpointing):
            try:
                body(model_wrap, x0, model_options)
            except BaseException as e:
                # A failed step's tensors (its autograd graph, activations) are freed now, not whenever the
                # traceback goes; the base is restored either way (training/adapters.py frozen_base).
                traceback.clear_frames(e.__traceback__)
                raise

    with torch.inference_mode(False), torch.enable_grad(), training_mode():
        latent = latent.detach().clone()
        guider.sample(torch.zeros_like(latent), latent, _SessionSampler(inside), sigmas, seed=settings.seed)


def check_trainable(session: Session, guider: comfy.samplers.CFGGuider, latent: torch.Tensor, sigma: float) -> None:
    """Before any long work (the distiller's teacher rollouts): one prediction of ``guider`` at ``sigma`` with rank-1
    LoRA terms on every target layer, and its backward pass, with no optimiser step, exactly as a training step
    runs; optim.NotTrainableError where the host's model runs an operation that autograd cannot differentiate (v0.33's
    Cosmos Predict2 attention). Costs one model pass (with ``guider``'s cfg: use 1) and loads the model as the run
    will."""
    def body(model_wrap, x0, model_options):
        device = session.device
        with lora_terms(session.dm, session.targets, 1, 1.0, session.settings.seed, device):
            x = x0[:1].to(device)
            with session.precision.autocast_context(device):
                out = model_wrap(x, torch.full((1,), float(sigma), device=device), model_options=model_options,
                                 seed=session.settings.seed)
            checked_backward(out.float().square().mean())

    run_in_sampling(session, guider, latent[:1], torch.tensor([float(sigma), 0.0]), body)


def train_adapter(session: Session, seed: int, step_loss: Callable[[int], torch.Tensor], what: str,
                  on_step: Callable[[int, float], None] | None = None) -> tuple[dict, list[float]]:
    """Train one set of LoRA terms (initialised from ``seed``) for ``settings.steps`` steps, ``step_loss(step)`` giving
    each step's loss; returns ({module: (down, up)} as fp32 CPU tensors, the losses). ``what`` names the run in the
    error for a loss that is not finite; ``on_step(step, loss)`` after each step. Checks for an interrupt every step."""
    s = session.settings
    losses: list[float] = []
    with lora_terms(session.dm, session.targets, s.rank, s.alpha, seed, session.device) as pairs:
        params = [p for pair in pairs.values() for p in (pair.down, pair.up)]
        optimizer = make_optimizer(session.optimizer, params, s.learning_rate, s.weight_decay)
        scaler = session.precision.scaler(session.device)
        for step in range(s.steps):
            mm.throw_exception_if_processing_interrupted()
            loss = step_loss(step)
            if not torch.isfinite(loss):
                raise NaNLossError(
                    f"{what} stopped at step {step + 1}/{s.steps}: the loss is {loss.item()} (not finite). Lower "
                    f"learning_rate (now {s.learning_rate:g}) or check the model and its inputs; no file was written.")
            optimizer_step(loss, params, optimizer, scaler)
            losses.append(float(loss.item()))
            if on_step is not None:
                on_step(step, losses[-1])
        adapters = {name: (p.down.detach().float().cpu().clone(), p.up.detach().float().cpu().clone())
                    for name, p in pairs.items()}
        del optimizer, params
    return adapters, losses
