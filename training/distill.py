"""Distilling the Slow and the Fast expert from the model itself, in one model load, with no image.

The teacher is the model with no adapter: it samples ``rollouts`` images with Euler on a fine schedule that
contains every point of the coarse schedule (``sampling/teacher.py``, the host's own sampler); rollout r starts from
the noise of ``seed + r``. The experts learn where the few-step SAMPLER goes (``sampler``: euler, dpmpp_2m or
res_multistep, the samplers ``schedules/sampler_steps.py`` models exactly, multistep history included).

At each coarse point i the expert is trained on the state x_i the SAMPLER reached there from the rollout's noise,
with the denoised prediction of its previous step as the history (dpmpp_2m, res_multistep). The sampler's own
update ``cx x_i + cd D + co D_old`` (sampler_steps.coefficients; linear, so differentiable in the expert's
prediction D) must land on the teacher's state x_k at the next coarse point from the same noise: where the student
drifted off the fine run, the expert learns to steer back. The sampler is rolled again every ``refresh`` optimiser
steps with the expert as it is then (its first roll is the base model's: a new expert starts at the base); the
fast expert's rolls start where the slow phase, run with the finished slow expert, leaves each rollout, so each
expert learns the states the sampler visits with the experts it will run with. Several prompts: the rollouts take
turns, as the teacher's. A roll has no autograd, batches a prompt's rollouts as the teacher's rollouts are batched
(the host's own estimate, made before the load) and checks for an interrupt at every step. (The earlier objective, Euler steps from the teacher's own states, lost to this one at
every measured point, euler included: benchmarks/README.md, "Distilled experts on the sampler's own states".)

Loss: MSE of the step's velocity, ``(x_i - x_next) / (s_i - s_k)`` against ``(x_i - x_k) / (s_i - s_k)``. Each
expert (LoRA terms as forward hooks, ``adapters.lora_terms``; only the expert in training has its terms on the
model, the finished slow expert's go on, fixed, only while its phase is rolled for the fast one) learns its
phase's segments: the slow expert the segments that start above the switch sigma, the fast one the rest
(``schedules/switch.py``), each predicting through the host's guider with its phase's cfg, as the phase runs at
inference (cfg 1 skips the negative pass there and here). The experts train one after the other inside one run
session (training/session.py: one model load, the trainer's memory plan, precision and optimiser); afterwards the
diffusion model has no hook, no trainable flag and the same tensors as before, and its weights were never written.
Before the rollouts, one model pass with its backward checks that the host can train the model at all
(session.check_trainable).

With a pair of models (e.g. Wan 2.2 A14B's high- and low-noise experts) the teacher is the pair, handing over at the
switch (the first model for the fine steps that start above it), and each expert trains in a session of its own
model: the slow expert on the first, the fast one on the second, one model load each. The sampler's slow phase is
rolled on the first model (with the finished slow expert) before the second is loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import comfy.model_management as mm
import comfy.samplers
import torch

from ..sampling import teacher
from ..schedules.sampler_steps import check_sampler, coefficients
from ..schedules.switch import EXPERTS, pair_switch_problem, phase_steps
from . import memory
from .adapters import fixed_terms
from .session import Session, check_trainable, clone_tensors, open_session, run_in_sampling, train_adapter
from .settings import DistillSettings

OBJECTIVE = ("distillation: MSE between the velocity of one step of the sampler from its own state x_i (with its "
             "history) with the expert's guided prediction and the velocity (x_i - x_k)/(s_i - s_k) to the teacher's "
             "x_k from the same noise (fine-step Euler rollouts)")


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
    check_sampler(s.sampler)
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
    if s.refresh < 0:
        raise ValueError(f"refresh={s.refresh}: optimiser steps between two rolls of the sampler, >= 0 (0: roll once).")


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


def _roll(session: Session, guider: _PromptGuider, model_options: dict, sampler: str, coarse: torch.Tensor,
          cfg_of: Callable[[int], float], x: torch.Tensor, old: torch.Tensor | None, start: int,
          stop: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The sampler's steps from coarse point ``start`` to ``stop`` from states ``x`` [B, *latent] with its history
    ``old`` (the denoised prediction of the step before ``start``; None at 0), on the model with whatever terms are
    on it, prompt ``guider.prompt``, cfg ``cfg_of(j)`` at point j. The states at start..stop and the denoised
    predictions at start..stop-1 (on the device, fp32)."""
    device = session.device
    xs, ds = [x], []
    for j in range(start, stop):
        mm.throw_exception_if_processing_interrupted()
        s_j = float(coarse[j])
        guider.set_cfg(cfg_of(j))
        with session.precision.autocast_context(device):
            d = guider(x, torch.full((len(x),), s_j, device=device), model_options=model_options,
                       seed=session.settings.seed).float()
        cx, cd, co = coefficients(sampler, float(coarse[j - 1]) if j > 0 else None, s_j, float(coarse[j + 1]))
        x = cx * x + cd * d + (co * old if co != 0.0 and old is not None else 0.0)
        old = d
        xs.append(x)
        ds.append(d)
    return xs, ds


class StudentStates:
    """The states the sampler visits from each rollout's noise (``x[r]``: [points, *latent]) and its denoised
    predictions there (``d[r]``: [points - 1, *latent], the history of the next step), kept on the CPU; ``roll``
    runs a stretch of the schedule again from the states kept at its start."""

    def __init__(self, teacher_states: TeacherStates, coarse: torch.Tensor, cfg_of: Callable[[int], float], chunk: int):
        self.coarse, self.cfg_of = coarse, cfg_of
        self.chunk, self.prompt_of = max(1, chunk), teacher_states.prompt_of
        with torch.inference_mode(False):  # normal tensors (the node runs in inference mode), updated in place later
            self.x = [t.clone() for t in teacher_states.states]  # point 0: the rollout's noise, as the teacher's
            self.d = [torch.zeros_like(t[:-1]) for t in teacher_states.states]

    def roll(self, session: Session, guider: _PromptGuider, model_options: dict, start: int, stop: int) -> None:
        """The sampler from point ``start`` to ``stop`` for every rollout (a prompt's rollouts in batches of
        ``chunk``) on ``session``'s model, with the terms on it now; no autograd."""
        device = session.device
        for p in sorted(set(self.prompt_of)):
            mine = [r for r, q in enumerate(self.prompt_of) if q == p]
            for at in range(0, len(mine), self.chunk):
                rs = mine[at:at + self.chunk]
                x = torch.stack([self.x[r][start] for r in rs]).to(device)
                old = torch.stack([self.d[r][start - 1] for r in rs]).to(device) if start > 0 else None
                guider.prompt = f"prompt_{p}"
                with torch.no_grad():
                    xs, ds = _roll(session, guider, model_options, session.settings.sampler, self.coarse, self.cfg_of,
                                   x, old, start, stop)
                for b, r in enumerate(rs):
                    self.x[r][start:stop + 1] = torch.stack([v[b] for v in xs]).cpu()
                    self.d[r][start:stop] = torch.stack([v[b] for v in ds]).cpu()


class SegmentStep:
    """One distillation step's loss for one expert: a random rollout and one of the expert's coarse segments, from
    the sampler's state there (``student``, rolled again every ``refresh`` steps)."""

    def __init__(self, session: Session, guider: _PromptGuider, teacher_states: TeacherStates, steps: list[int],
                 coarse: torch.Tensor, gen: torch.Generator, model_options: dict, cfg: float, student: StudentStates):
        self.session, self.guider, self.teacher, self.steps = session, guider, teacher_states, steps
        self.coarse, self.gen, self.model_options, self.cfg, self.student = coarse, gen, model_options, cfg, student

    def draw(self, step: int) -> tuple[int, int]:
        """Step ``step``'s rollout and segment (a random one of each), after rolling the sampler again where it is
        due; the guider set to that rollout's prompt and the expert's cfg."""
        refresh = self.session.settings.refresh
        if step == 0 or (refresh > 0 and step % refresh == 0):
            self.student.roll(self.session, self.guider, self.model_options, self.steps[0], self.steps[-1] + 1)
        r = int(torch.randint(len(self.teacher.states), (1,), generator=self.gen))
        j = self.steps[int(torch.randint(len(self.steps), (1,), generator=self.gen))]
        self.guider.prompt = f"prompt_{self.teacher.prompt_of[r]}"
        self.guider.set_cfg(self.cfg)
        return r, j

    def __call__(self, step: int) -> torch.Tensor:
        r, j = self.draw(step)
        device, sampler = self.session.device, self.session.settings.sampler
        s_i, s_k = float(self.coarse[j]), float(self.coarse[j + 1])
        x_i = self.student.x[r][j:j + 1].to(device)
        old = self.student.d[r][j - 1:j] if j > 0 else None  # the sampler's history: its prediction at j - 1
        target = (x_i - self.teacher.states[r][j + 1:j + 2].to(device)) / (s_i - s_k)
        with self.session.precision.autocast_context(device):
            denoised = self.guider(x_i, torch.full((1,), s_i, device=device), model_options=self.model_options,
                                   seed=self.session.settings.seed).float()
        cx, cd, co = coefficients(sampler, float(self.coarse[j - 1]) if j > 0 else None, s_i, s_k)
        x_next = cx * x_i + cd * denoised + (co * old.to(device) if co != 0.0 else 0.0)
        return torch.nn.functional.mse_loss((x_i - x_next) / (s_i - s_k), target)


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
    # The student's rolls batch a prompt's rollouts as the teacher's do (the host's estimate, before the load).
    chunk = teacher.batch_size(first.work, latent, -(-settings.rollouts // len(prompts)))
    kept, result.teacher_passes = _teacher_states(sessions, prompts, negative, latent, grid, index, progress)
    segments = phase_steps(coarse, settings.switch_sigma)
    cfg_of = lambda j: settings.cfg if j in segments["slow"] else settings.cfg_fast  # noqa: E731
    student = StudentStates(kept, coarse, cfg_of, chunk)
    gen = torch.Generator().manual_seed(settings.seed)
    for session in {id(s): s for s in sessions.values()}.values():
        experts = [e for e in EXPERTS if sessions[e] is session]
        guider = _PromptGuider(session.work)
        guider.set_prompts([clone_tensors(p) for p in prompts], clone_tensors(negative))
        run_in_sampling(session, guider, torch.zeros_like(latent), coarse,
                        lambda g, x0, options, session=session, experts=experts: _train_experts(
                            session, g, experts, kept, student, segments, options, gen, result, progress))
    return result


def _train_experts(session: Session, guider: _PromptGuider, experts: list[str], kept: TeacherStates,
                   student: StudentStates, segments: dict, model_options: dict, gen: torch.Generator,
                   result: DistillResult, progress: _Progress) -> None:
    """``experts`` (the slow one, then the fast one, or the one this session's model trains), inside the session's
    sampling. After the slow expert, the sampler's slow phase is rolled with it (fixed) on this model: the fast
    expert's states start where that phase leaves each rollout."""
    s = session.settings
    cfgs = {"slow": s.cfg, "fast": s.cfg_fast}
    for expert in experts:
        stepper = SegmentStep(session, guider, kept, segments[expert], student.coarse, gen, model_options,
                              cfgs[expert], student)
        result.adapters[expert], result.losses[expert] = train_adapter(
            session, s.seed + EXPERTS.index(expert), stepper, f"Distillation ({expert} expert)", progress.step)
        if expert == "slow":
            with fixed_terms(session.targets, result.adapters["slow"], s.rank, s.alpha, session.device):
                student.roll(session, guider, model_options, 0, segments["fast"][0])


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
        rollouts=settings.rollouts, sampler=settings.sampler, refresh=settings.refresh, rank=settings.rank,
        alpha=settings.alpha, steps=settings.steps,
        learning_rate=settings.learning_rate, seed=settings.seed, target_modules=list(settings.target_modules),
    )
