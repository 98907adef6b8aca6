"""Distilling the Slow and the Fast expert from the model itself, in one model load, with no image.

The teacher is the model with no adapter: it samples ``rollouts`` images with Euler on a fine schedule that
contains every point of the coarse schedule (``nodes/teacher.py``, the host's own sampler). For the coarse segment
[s_i, s_k] of rollout r the target velocity at the teacher's state x_i is ``(x_i - x_k) / (s_i - s_k)``: the
single Euler step that lands exactly on the teacher's x_k. Each expert (LoRA terms as forward hooks,
``adapters.lora_terms``; only the expert in training has its terms on the model) learns its phase's segments: the slow expert the segments that start above the switch sigma, the fast one the
rest, each predicting through the host's guider with its phase's cfg, as the phase runs at inference (cfg 1
skips the negative pass there and here). Loss: MSE between the expert's velocity ``(x - denoised) / s`` and the
target. The experts are trained one after the other inside one sampler run of the host's guider (the model is
loaded once, with the trainer's memory plan, precision and optimiser: training/loop.py); afterwards the diffusion
model has no hook, no trainable flag and the same tensors as before, and its weights were never written.
"""
from __future__ import annotations

import logging
import math
import traceback
from dataclasses import dataclass, field
from typing import Callable

import comfy.model_management as mm
import comfy.samplers
import torch

from ..host_compat import training_mode
from ..nodes import teacher
from ..nodes.schedules import first_fast_step
from . import memory
from .adapters import frozen_base, lora_terms
from .loop import (NaNLossError, TrainSettings, clone_tensors, make_optimizer, optimizer_step, plan_memory, prepare_run,
                   trainable_blocks)

log = logging.getLogger(__name__)

PHASES = ("slow", "fast")
OBJECTIVE = ("distillation: MSE between the expert's guided velocity at the teacher's state x_i and the teacher's "
             "segment velocity (x_i - x_k)/(s_i - s_k) from its fine-step Euler rollouts")


@dataclass
class DistillSettings:
    sigmas: tuple[float, ...]  # the coarse schedule the experts will sample, ending at 0
    switch_sigma: float
    teacher_sigmas: tuple[float, ...]  # the teacher's fine schedule: contains every coarse point
    cfg: float  # the teacher's and the slow phase's CFG scale
    cfg_fast: float
    rollouts: int
    steps: int  # optimiser steps per expert
    rank: int
    alpha: float
    learning_rate: float
    seed: int
    target_modules: tuple[str, ...]
    block_lists: tuple[str, ...] = ()
    gradient_checkpointing: bool = True
    weight_decay: float = 0.01
    activation_per_token: dict[str, float] = field(default_factory=dict)  # recipe's c_block per block list
    width_module: str | None = None  # a Linear whose out_features is the model's hidden width


@dataclass
class DistillResult:
    adapters: dict[str, dict] = field(default_factory=dict)  # phase -> {module: (down, up)}, fp32 CPU
    losses: dict[str, list[float]] = field(default_factory=dict)
    teacher_passes: int = 0
    optimizer: str = ""
    precision: str = ""
    memory: memory.MemoryEstimate | None = None


def teacher_schedule(coarse: torch.Tensor, fine: torch.Tensor, tol: float = 1e-5) -> tuple[torch.Tensor, list[int]]:
    """The coarse points plus the fine points between them (a fine point within ``tol`` of a coarse one gives way
    to it); returns (schedule, the coarse points' indices in it)."""
    top = float(coarse[0])
    points = [float(s) for s in coarse]
    points += [float(s) for s in fine if float(s) < top and min(abs(float(s) - c) for c in coarse.tolist()) > tol]
    grid = torch.tensor(sorted(set(points), reverse=True), dtype=torch.float32)
    index = [int(torch.argmin((grid - float(c)).abs())) for c in coarse]
    return grid, index


def phase_segments(sigmas, switch_sigma: float) -> dict[str, list[int]]:
    """Coarse segment indices j (segment [s_j, s_j+1]) per phase, as the phase sampler splits the steps."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    k = first_fast_step(sigmas, switch_sigma)
    steps = len(sigmas) - 1
    return {"slow": list(range(k)), "fast": list(range(k, steps))}


def check_settings(s: DistillSettings) -> None:
    sigmas = torch.tensor(s.sigmas)
    if len(sigmas) < 3 or not torch.isfinite(sigmas).all() or not torch.all(sigmas[1:] < sigmas[:-1]) or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas: expected a descending schedule of at least 2 steps that ends at 0 (e.g. from Glance Fit Schedule).")
    segments = phase_segments(sigmas, s.switch_sigma)
    for phase in PHASES:
        if not segments[phase]:
            raise ValueError(
                f"switch_sigma={s.switch_sigma:g} leaves no {phase} step in the schedule "
                f"({', '.join(f'{float(v):.4f}' for v in sigmas)}); connect the switch_sigma that belongs to these "
                "sigmas (e.g. both from Glance Fit Schedule).")
    for name, value in (("cfg", s.cfg), ("cfg_fast", s.cfg_fast)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}={value!r}: use a CFG scale >= 0 (1.0 turns CFG off for that phase).")
    if s.rollouts < 1:
        raise ValueError(f"rollouts={s.rollouts}: at least 1 teacher rollout is needed.")
    if s.steps < 1:
        raise ValueError(f"steps={s.steps}: each expert needs at least 1 optimiser step.")
    if s.rank < 1:
        raise ValueError(f"rank={s.rank}: use a LoRA rank of at least 1 (or -1 for the architecture's default).")
    if not (math.isfinite(s.learning_rate) and s.learning_rate > 0):
        raise ValueError(f"learning_rate={s.learning_rate!r}: use a positive learning rate, e.g. 1e-4.")


class _PromptGuider(comfy.samplers.CFGGuider):
    """The host's guider over several prompts: ``prompt`` names the conds that guide the next prediction."""

    prompt = "prompt_0"

    def set_prompts(self, prompts: list, negative) -> None:
        conds = {f"prompt_{i}": p for i, p in enumerate(prompts)}
        conds["negative"] = negative
        self.inner_set_conds(conds)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                self.conds.get(self.prompt), self.cfg, model_options=model_options,
                                                seed=seed)


class _DistillSampler(comfy.samplers.Sampler):
    def __init__(self, run: Callable):
        self.run = run

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        self.run(model_wrap, latent_image, extra_args["model_options"])
        return latent_image


def distill_experts(patcher, prompts: list, negative, latent: torch.Tensor, settings: DistillSettings, arch: str,
                    on_progress: Callable[[int, int], None] | None = None) -> DistillResult:
    """Teacher rollouts, then the slow and the fast expert; nothing is saved here.

    ``prompts``: conditionings, one per prompt (rollout r uses prompt r mod len); ``latent``: one empty latent in
    the model's layout; ``on_progress(done, total)`` after each teacher step and each optimiser step."""
    check_settings(settings)
    result = DistillResult()
    coarse = torch.tensor(settings.sigmas, dtype=torch.float32)
    grid, index = teacher_schedule(coarse, torch.tensor(settings.teacher_sigmas, dtype=torch.float32))
    segments = phase_segments(coarse, settings.switch_sigma)
    teacher_steps = len(grid) - 1
    total = settings.rollouts * teacher_steps + settings.steps * len(PHASES)

    def progress(done):
        if on_progress is not None:
            on_progress(done, total)

    # 0. The run's plan, before anything is loaded: the trainer's precision, optimiser and memory estimate (one
    # expert's terms and optimiser state at a time; cond and uncond in one batch where a phase uses CFG).
    setup = prepare_run(patcher, settings.target_modules, arch)
    work, dm, targets, device, prec = setup.work, setup.dm, setup.targets, setup.device, setup.precision
    result.optimizer, result.precision = setup.optimizer, prec.describe()
    batch = 2 if any(c != 1.0 for c in (settings.cfg, settings.cfg_fast)) else 1
    text_tokens = max(int(c.shape[1]) for cond in [*prompts, negative] for c, _ in cond)
    plan = TrainSettings(sigmas=settings.sigmas, target_modules=settings.target_modules, rank=settings.rank,
                         alpha=settings.alpha, learning_rate=settings.learning_rate, steps=settings.steps, seed=settings.seed,
                         gradient_checkpointing=settings.gradient_checkpointing, block_lists=settings.block_lists,
                         activation_per_token=dict(settings.activation_per_token), width_module=settings.width_module)
    est = result.memory = plan_memory(work, targets, plan, (batch, *latent.shape[1:]), text_tokens, prec, result.optimizer)
    log.info("Glance distill: %s on %s, %s; %d LoRA layers per expert; memory: %s", arch, device, prec.describe(),
             len(targets), memory.breakdown(est))
    memory.check_fits(est, device, mm.get_total_memory(device), mm.extra_reserved_memory())

    # 1. The teacher (no adapter anywhere yet): its states at the coarse points, per rollout.
    states: list[torch.Tensor] = []
    prompt_of: list[int] = []

    def keep(r: teacher.Rollout) -> None:
        states.append(r.x[index].clone())
        prompt_of.append(r.prompt)

    with torch.no_grad():
        result.teacher_passes = teacher.rollouts(
            work, prompts, negative, settings.cfg, latent, grid, settings.rollouts, settings.seed, keep,
            progress)
    done = settings.rollouts * teacher_steps

    # 2. The experts, one after the other, in one sampler run of the host's guider; only the expert in training has
    # its terms on the model (its own lora_terms context, removed before the next one starts).
    cfgs = {"slow": settings.cfg, "fast": settings.cfg_fast}
    prompts = [clone_tensors(p) for p in prompts]
    negative = clone_tensors(negative)

    def train_expert(guider, phase: str, n: int, gen: torch.Generator, model_options) -> None:
        nonlocal done
        guider.set_cfg(cfgs[phase])
        losses = result.losses[phase] = []
        with lora_terms(dm, targets, settings.rank, settings.alpha, settings.seed + n, device) as pairs:
            params = [p for pair in pairs.values() for p in (pair.down, pair.up)]
            optimizer = make_optimizer(result.optimizer, params, settings.learning_rate, settings.weight_decay)
            scaler = prec.scaler(device)
            for step in range(settings.steps):
                mm.throw_exception_if_processing_interrupted()
                r = int(torch.randint(len(states), (1,), generator=gen))
                j = segments[phase][int(torch.randint(len(segments[phase]), (1,), generator=gen))]
                s_i, s_k = float(coarse[j]), float(coarse[j + 1])
                x_i = states[r][j:j + 1].to(device)
                target = (x_i - states[r][j + 1:j + 2].to(device)) / (s_i - s_k)
                sigma = torch.full((1,), s_i, device=device)
                guider.prompt = f"prompt_{prompt_of[r]}"
                with prec.autocast_context(device):
                    denoised = guider(x_i, sigma, model_options=model_options, seed=settings.seed)
                velocity = (x_i - denoised.float()) / s_i
                loss = torch.nn.functional.mse_loss(velocity, target)
                if not torch.isfinite(loss):
                    raise NaNLossError(
                        f"Distillation stopped at {phase} step {step + 1}/{settings.steps}: the loss is {loss.item()} "
                        f"(not finite). Lower learning_rate (now {settings.learning_rate:g}) or check the model; "
                        "no file was written.")
                optimizer_step(loss, params, optimizer, scaler)
                losses.append(float(loss.item()))
                done += 1
                progress(done)
            result.adapters[phase] = {name: (p.down.detach().float().cpu().clone(), p.up.detach().float().cpu().clone())
                                      for name, p in pairs.items()}
            del optimizer, params

    def run(guider, x0, model_options):
        memory.check_full_load(work, est, device)  # the guider's own load must not have offloaded part of it
        gen = torch.Generator().manual_seed(settings.seed)
        with frozen_base(guider.inner_model), \
                trainable_blocks(dm, settings.block_lists, settings.gradient_checkpointing):
            try:
                for n, phase in enumerate(PHASES):
                    train_expert(guider, phase, n, gen, model_options)
            except BaseException as e:
                # A failed step's tensors (its autograd graph, activations) are freed now, not whenever the
                # traceback goes; the base is restored either way (training/adapters.py frozen_base).
                traceback.clear_frames(e.__traceback__)
                raise

    guider = _PromptGuider(work)
    guider.set_prompts(prompts, negative)
    # Loaded as train_lora loads (training/loop.py): the whole model, inside inference mode, with room for the training
    # state; the guider's own load below finds it loaded and moves nothing.
    with torch.inference_mode():
        mm.load_models_gpu([work], memory_required=est.training, force_full_load=True)
    memory.check_full_load(work, est, device)
    with torch.inference_mode(False), torch.enable_grad(), training_mode():
        x0 = torch.zeros_like(latent)
        guider.sample(torch.zeros_like(x0), x0, _DistillSampler(run), coarse, seed=settings.seed)
    return result


def phase_settings(settings: DistillSettings, phase: str) -> dict:
    """The metadata of one expert's file (what it was trained on and how)."""
    coarse = torch.tensor(settings.sigmas, dtype=torch.float32)
    starts = [float(coarse[j]) for j in phase_segments(coarse, settings.switch_sigma)[phase]]
    return dict(
        phase=phase, objective=OBJECTIVE, sigmas=starts, timesteps=[round(s * 1000.0, 4) for s in starts],
        schedule=[float(s) for s in settings.sigmas], switch_sigma=settings.switch_sigma,
        cfg=settings.cfg if phase == "slow" else settings.cfg_fast, teacher_cfg=settings.cfg,
        teacher_steps=len(teacher_schedule(coarse, torch.tensor(settings.teacher_sigmas))[0]) - 1, rollouts=settings.rollouts, rank=settings.rank,
        alpha=settings.alpha, steps=settings.steps, learning_rate=settings.learning_rate, seed=settings.seed,
        target_modules=list(settings.target_modules),
    )
