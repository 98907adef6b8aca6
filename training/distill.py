"""Distilling the Slow and the Fast expert from the model itself, in one model load, with no image.

The teacher is the model with no adapter: it samples ``rollouts`` images with Euler on a fine schedule that
contains every point of the coarse schedule (``sampling/teacher.py``, the host's own sampler). For the coarse segment
[s_i, s_k] of rollout r the target velocity at the teacher's state x_i is ``(x_i - x_k) / (s_i - s_k)``: the
single Euler step that lands exactly on the teacher's x_k. Each expert (LoRA terms as forward hooks,
``adapters.lora_terms``; only the expert in training has its terms on the model) learns its phase's segments: the
slow expert the segments that start above the switch sigma, the fast one the rest (``schedules/switch.py``), each
predicting through the host's guider with its phase's cfg, as the phase runs at inference (cfg 1 skips the negative
pass there and here). Loss: MSE between the expert's velocity ``(x - denoised) / s`` and the target. The experts
train one after the other inside one run session (training/session.py: one model load, the trainer's memory plan,
precision and optimiser); afterwards the diffusion model has no hook, no trainable flag and the same tensors as
before, and its weights were never written. Before the rollouts, one model pass with its backward checks that the
host can train the model at all (session.check_trainable).

With a pair of models (e.g. Wan 2.2 A14B's high- and low-noise experts) the teacher is the pair, handing over at the
switch (the first model for the fine steps that start above it), and each expert trains in a session of its own
model: the slow expert on the first, the fast one on the second, one model load each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import comfy.samplers
import torch

from ..sampling import teacher
from ..schedules.switch import EXPERTS, pair_switch_problem, phase_steps
from . import memory
from .session import Session, check_trainable, clone_tensors, open_session, run_in_sampling, train_adapter
from .settings import DistillSettings

OBJECTIVE = ("distillation: MSE between the expert's guided velocity at the teacher's state x_i and the teacher's "
             "segment velocity (x_i - x_k)/(s_i - s_k) from its fine-step Euler rollouts")


@dataclass
class DistillResult:
    adapters: dict[str, dict] = field(default_factory=dict)  # expert -> {module: (down, up)}, fp32 CPU
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


def check_settings(s: DistillSettings) -> None:
    sigmas = torch.tensor(s.sigmas)
    if len(sigmas) < 3 or not torch.isfinite(sigmas).all() or not torch.all(sigmas[1:] < sigmas[:-1]) or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas: expected a descending schedule of at least 2 steps that ends at 0 (e.g. from Glance Fit Schedule).")
    segments = phase_steps(sigmas, s.switch_sigma)
    for expert in EXPERTS:
        if not segments[expert]:
            raise ValueError(
                f"switch_sigma={s.switch_sigma:g} leaves no {expert} step in the schedule "
                f"({', '.join(f'{float(v):.4f}' for v in sigmas)}); connect the switch_sigma that belongs to these "
                "sigmas (e.g. both from Glance Fit Schedule).")
    if s.handover_sigma is not None and (problem := pair_switch_problem(sigmas, s.switch_sigma, s.handover_sigma)):
        raise ValueError(problem)
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


class _Progress:
    """Steps done of the whole run (teacher steps, then optimiser steps), handed to ``on_progress(done, total)``."""

    def __init__(self, total: int, on_progress: Callable[[int, int], None] | None):
        self.total, self.on_progress, self.done = total, on_progress, 0

    def at(self, done: int) -> None:
        self.done = done
        if self.on_progress is not None:
            self.on_progress(done, self.total)

    def step(self, *_) -> None:
        self.at(self.done + 1)


@dataclass
class TeacherStates:
    """The teacher's states at the coarse points (one [points, *latent] tensor per rollout) and their prompts."""
    states: list[torch.Tensor] = field(default_factory=list)
    prompt_of: list[int] = field(default_factory=list)


class SegmentStep:
    """One distillation step's loss for one expert: a random rollout and one of the expert's coarse segments."""

    def __init__(self, session: Session, guider: _PromptGuider, teacher_states: TeacherStates, steps: list[int],
                 coarse: torch.Tensor, gen: torch.Generator, model_options: dict):
        self.session, self.guider, self.teacher, self.steps = session, guider, teacher_states, steps
        self.coarse, self.gen, self.model_options = coarse, gen, model_options

    def __call__(self, step: int) -> torch.Tensor:
        device, states = self.session.device, self.teacher.states
        r = int(torch.randint(len(states), (1,), generator=self.gen))
        j = self.steps[int(torch.randint(len(self.steps), (1,), generator=self.gen))]
        s_i, s_k = float(self.coarse[j]), float(self.coarse[j + 1])
        x_i = states[r][j:j + 1].to(device)
        target = (x_i - states[r][j + 1:j + 2].to(device)) / (s_i - s_k)
        sigma = torch.full((1,), s_i, device=device)
        self.guider.prompt = f"prompt_{self.teacher.prompt_of[r]}"
        with self.session.precision.autocast_context(device):
            denoised = self.guider(x_i, sigma, model_options=self.model_options, seed=self.session.settings.seed)
        velocity = (x_i - denoised.float()) / s_i
        return torch.nn.functional.mse_loss(velocity, target)


def _teacher_states(sessions: dict[str, Session], prompts, negative, latent, grid, index,
                    progress: _Progress) -> tuple[TeacherStates, int]:
    """The teacher's rollouts (no adapter anywhere yet), kept at the coarse points; and its model passes. With a pair
    of models the teacher is the pair: the slow expert's model for the steps starting above the switch, the fast
    expert's for the rest."""
    s, kept = sessions["slow"].settings, TeacherStates()
    low = sessions["fast"].work if sessions["fast"] is not sessions["slow"] else None

    def keep(r: teacher.Rollout) -> None:
        kept.states.append(r.x[index].clone())
        kept.prompt_of.append(r.prompt)

    with torch.no_grad():
        passes = teacher.rollouts(sessions["slow"].work, prompts, negative, s.cfg, latent, grid, s.rollouts, s.seed,
                                  keep, progress.at, low_noise=low, handover=s.switch_sigma if low is not None else None)
    progress.done = s.rollouts * (len(grid) - 1)
    return kept, passes


def _open_sessions(models: dict, settings: DistillSettings, arch: str, shape: tuple, text_tokens: int,
                   prompts: list, negative, latent: torch.Tensor) -> dict[str, Session]:
    """Each expert's session (one shared where both train on one model), planned and checked to fit, and each model
    checked to be trainable (one model pass each): all before the teacher's rollouts."""
    sessions: dict[str, Session] = {}
    for expert in EXPERTS:
        same = next((sessions[e] for e in sessions if models[e] is models[expert]), None)
        sessions[expert] = same or open_session(models[expert], settings, arch, shape, text_tokens,
                                                "distill" if models["slow"] is models["fast"] else f"distill ({expert})")
    segments = phase_steps(torch.tensor(settings.sigmas), settings.switch_sigma)
    for expert in EXPERTS:  # each model at the first sigma it trains at
        if expert == "slow" or sessions["fast"] is not sessions["slow"]:
            probe = _PromptGuider(sessions[expert].work)
            probe.set_prompts([clone_tensors(prompts[0])], clone_tensors(negative))
            probe.set_cfg(1.0)
            check_trainable(sessions[expert], probe, torch.zeros_like(latent), settings.sigmas[segments[expert][0]])
    return sessions


def distill_experts(patcher, prompts: list, negative, latent: torch.Tensor, settings: DistillSettings, arch: str,
                    on_progress: Callable[[int, int], None] | None = None, low_noise=None) -> DistillResult:
    """Teacher rollouts, then the slow and the fast expert; nothing is saved here.

    ``prompts``: conditionings, one per prompt (rollout r uses prompt r mod len); ``latent``: one empty latent in
    the model's layout; ``on_progress(done, total)`` after each teacher step and each optimiser step. With
    ``low_noise`` (a second model of the same family, e.g. Wan 2.2 A14B's low-noise expert; ``patcher`` is then the
    high-noise one) the teacher is the pair, handing over at the switch, the slow expert trains on ``patcher`` and the
    fast one on ``low_noise``, one model loaded at a time where the device cannot hold both."""
    check_settings(settings)
    coarse = torch.tensor(settings.sigmas, dtype=torch.float32)
    grid, index = teacher_schedule(coarse, torch.tensor(settings.teacher_sigmas, dtype=torch.float32))
    progress = _Progress(settings.rollouts * (len(grid) - 1) + settings.steps * len(EXPERTS), on_progress)
    # The memory plan holds one expert's terms and optimiser state at a time, with cond and uncond in one batch where
    # a phase uses CFG.
    batch = 2 if any(c != 1.0 for c in (settings.cfg, settings.cfg_fast)) else 1
    text_tokens = max(int(c.shape[1]) for cond in [*prompts, negative] for c, _ in cond)
    models = {"slow": patcher, "fast": patcher if low_noise is None else low_noise}
    sessions = _open_sessions(models, settings, arch, (batch, *latent.shape[1:]), text_tokens, prompts, negative, latent)
    first = sessions["slow"]
    result = DistillResult(optimizer=first.optimizer, precision=first.precision.describe(),
                           memory=max((s.memory for s in sessions.values()), key=lambda m: m.total))
    kept, result.teacher_passes = _teacher_states(sessions, prompts, negative, latent, grid, index, progress)
    segments = phase_steps(coarse, settings.switch_sigma)
    cfgs = {"slow": settings.cfg, "fast": settings.cfg_fast}
    gen = torch.Generator().manual_seed(settings.seed)
    for session in {id(s): s for s in sessions.values()}.values():
        experts = [e for e in EXPERTS if sessions[e] is session]

        def body(guider, x0, model_options, session=session, experts=experts):
            for expert in experts:
                guider.set_cfg(cfgs[expert])
                stepper = SegmentStep(session, guider, kept, segments[expert], coarse, gen, model_options)
                result.adapters[expert], result.losses[expert] = train_adapter(
                    session, settings.seed + EXPERTS.index(expert), stepper, f"Distillation ({expert} expert)",
                    progress.step)

        guider = _PromptGuider(session.work)
        guider.set_prompts([clone_tensors(p) for p in prompts], clone_tensors(negative))
        run_in_sampling(session, guider, torch.zeros_like(latent), coarse, body)
    return result


def expert_metadata(settings: DistillSettings, expert: str) -> dict:
    """The metadata of one expert's file (what it was trained on and how)."""
    coarse = torch.tensor(settings.sigmas, dtype=torch.float32)
    starts = [float(coarse[j]) for j in phase_steps(coarse, settings.switch_sigma)[expert]]
    pair = {} if settings.handover_sigma is None else dict(
        trained_on="model (the high-noise expert)" if expert == "slow" else "model_low_noise (the low-noise expert)",
        handover_sigma=settings.handover_sigma)
    return dict(**pair,
        phase=expert, objective=OBJECTIVE, sigmas=starts, timesteps=[round(s * 1000.0, 4) for s in starts],
        schedule=[float(s) for s in settings.sigmas], switch_sigma=settings.switch_sigma,
        cfg=settings.cfg if expert == "slow" else settings.cfg_fast, teacher_cfg=settings.cfg,
        teacher_steps=len(teacher_schedule(coarse, torch.tensor(settings.teacher_sigmas))[0]) - 1,
        rollouts=settings.rollouts, rank=settings.rank, alpha=settings.alpha, steps=settings.steps,
        learning_rate=settings.learning_rate, seed=settings.seed, target_modules=list(settings.target_modules),
    )
