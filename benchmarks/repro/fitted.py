"""Reproduction rows for fitted schedules and distilled experts, produced through the pack's nodes.

For the reproduction's runner: given the loaded kit objects (the ``NODE_CLASS_MAPPINGS``, the model, the
training and the held-out conditionings, the negative, an empty latent for the size), ``fitted_rows`` fits the
schedules and distils the experts from the training caption(s) only, then samples every held-out prompt with
each row's models and schedule; it returns each row's latents (and what it cost) in the order of the prompts.
Rows (names as in the issue):

- ``fitted schedule, 10 steps`` / ``6 steps``: Glance Fit Schedule (5+5 / 3+3, switch placed by the fit), the
  base model on both phases;
- ``fitted schedule, 10 steps (5 slow + 5 fast)``: the fit with the switch held at the paper's switch (steps 1-9
  slow, 11-50 fast of the model's 50-step schedule): 5 steps above it, 5 below (on twice the default teacher's
  steps: its 100 have only 4 points above that switch);
- ``distilled experts, 10 steps`` / ``6 steps``: Glance Distill Experts on the fitted 10 / 6-step schedule;
- ``paper's LoRAs on the fitted schedule``: the given Slow/Fast LoRA models (GlanceTrainLoRA's paper recipe)
  on the fitted 5 + 5 schedule with the paper's switch;
- ``... (8 captions)``: the fit and the distillation from 8 training captions (Conditioning (Combine)).

The reproduction (``python -m benchmarks.repro.run``) calls ``fitted_rows`` and ``time_fit``.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import torch

FIT_ROLLOUTS = 8


def default_teacher() -> tuple[int, str]:
    """The nodes' default fine schedule (sampling/teacher.py): (steps, scheduler)."""
    from cli.host import pack_module

    teacher = pack_module("sampling.teacher")
    return teacher.FINE_STEPS, teacher.FINE_SCHEDULER


@dataclass
class Kit:
    """What the rows need, loaded once (by the reproduction's runner)."""

    N: dict  # the host's NODE_CLASS_MAPPINGS
    model: object
    train_positive: list  # the training caption's conditioning
    negative: list
    latent: dict  # an empty LATENT of the image size (batch 1)
    cfg: float
    train_positives: list = field(default_factory=list)  # 8 captions' conditionings (for the "8 captions" rows)


@dataclass
class Row:
    name: str
    model_slow: object
    model_fast: object
    sigmas: torch.Tensor
    switch: float
    cost_seconds: float = 0.0  # fit + distillation time that the row needed (shared work counted in each row)
    cost_passes: int = 0


def combine(conds: list) -> list:
    """Conditioning (Combine) of several prompts: one list, one entry per prompt (what the nodes read as prompts)."""
    return [entry for c in conds for entry in c]


def fit(kit: Kit, steps_slow: int, steps_fast: int, positive=None, switch_sigma: float = 0.0, rollouts: int = FIT_ROLLOUTS,
        seed: int = 0, fine_steps: int | None = None) -> tuple[torch.Tensor, float, float]:
    """Glance Fit Schedule with its default teacher (``fine_steps`` of its scheduler where given); (sigmas, switch
    sigma, seconds)."""
    default_steps, scheduler = default_teacher()
    fine_steps = fine_steps or default_steps
    t0 = time.perf_counter()
    sigmas, switch, _ = kit.N["GlanceFitSchedule"].execute(
        model=kit.model, positive=positive if positive is not None else kit.train_positive, negative=kit.negative,
        cfg=kit.cfg, latent_image=kit.latent, steps_slow=steps_slow, steps_fast=steps_fast, fine_steps=fine_steps,
        scheduler=scheduler, rollouts=rollouts, seed=seed, switch_sigma=switch_sigma,
        save_name=f"glance_repro/fit_{steps_slow}+{steps_fast}_{uuid.uuid4().hex[:6]}").args
    return sigmas, switch, time.perf_counter() - t0


def distill(kit: Kit, sigmas, switch, positive=None, steps: int = 200, rollouts: int = 16, learning_rate: float = 3e-5,
            rank: int = -1, seed: int = 0, cfg_fast: float = -1.0) -> tuple[object, object, float]:
    """Glance Distill Experts on ``sigmas``; (model_slow, model_fast, seconds)."""
    t0 = time.perf_counter()
    tag = uuid.uuid4().hex[:6]
    out = kit.N["GlanceDistillExperts"].execute(
        model=kit.model, positive=positive if positive is not None else kit.train_positive, negative=kit.negative,
        cfg=kit.cfg, latent_image=kit.latent, sigmas=sigmas, switch_sigma=switch, rank=rank, learning_rate=learning_rate,
        steps=steps, rollouts=rollouts, seed=seed, save_name_slow=f"glance_repro/distilled_{tag}_slow",
        save_name_fast=f"glance_repro/distilled_{tag}_fast", cfg_fast=cfg_fast).args
    return out[0], out[1], time.perf_counter() - t0


def build_rows(kit: Kit, paper_switch: float, paper_loras: tuple | None = None, distill_options: dict | None = None,
               eight_captions: bool = True) -> list[Row]:
    """Fit and distil from the training caption(s); the rows' models and schedules (no sampling yet)."""
    options = distill_options or {}
    rows = []
    s10, w10, t10 = fit(kit, 5, 5)
    s6, w6, t6 = fit(kit, 3, 3)
    # kl_optimal's default 100 steps have only 4 points above the paper's switch: twice as many for 5 slow steps there.
    s55, w55, t55 = fit(kit, 5, 5, switch_sigma=paper_switch, fine_steps=2 * default_teacher()[0])
    rows += [Row("fitted schedule, 10 steps", kit.model, kit.model, s10, w10, t10),
             Row("fitted schedule, 6 steps", kit.model, kit.model, s6, w6, t6),
             Row("fitted schedule, 10 steps (5 slow + 5 fast)", kit.model, kit.model, s55, w55, t55)]
    slow, fast, d10 = distill(kit, s10, w10, **options)
    rows.append(Row("distilled experts, 10 steps", slow, fast, s10, w10, t10 + d10))
    slow, fast, d6 = distill(kit, s6, w6, **options)
    rows.append(Row("distilled experts, 6 steps", slow, fast, s6, w6, t6 + d6))
    if paper_loras is not None:
        rows.append(Row("paper's LoRAs on the fitted schedule", paper_loras[0], paper_loras[1], s55, w55, t55))
    if eight_captions and kit.train_positives:
        many = combine(kit.train_positives)
        s8, w8, t8 = fit(kit, 5, 5, positive=many)
        rows.append(Row("fitted schedule, 10 steps (8 captions)", kit.model, kit.model, s8, w8, t8))
        slow, fast, d8 = distill(kit, s8, w8, positive=many, **options)
        rows.append(Row("distilled experts, 10 steps (8 captions)", slow, fast, s8, w8, t8 + d8))
    return rows


def sample(N, row: Row, positive, negative, cfg: float, seeds: int, seed: int, latent_size: tuple) -> torch.Tensor:
    """``seeds`` images of one prompt (one batch, noise from ``seed``) with the row's models and schedule."""
    latent = {"samples": torch.zeros((seeds, *latent_size))}
    out = N["GlancePhaseKSampler"].execute(
        model_slow=row.model_slow, model_fast=row.model_fast, positive=positive, negative=negative, latent_image=latent,
        seed=seed, steps=len(row.sigmas) - 1, switch_sigma=row.switch, cfg_slow=cfg, cfg_fast=cfg, sampler_name="euler",
        scheduler="simple", sigmas=row.sigmas).args[0]
    return out["samples"].float()


def fitted_rows(kit: Kit, held_out: list, seeds: int, paper_switch: float, paper_loras: tuple | None = None,
                distill_options: dict | None = None, eight_captions: bool = True) -> dict[str, dict]:
    """Every row's samples of the held-out prompts: {row name: {"latent", "steps", "seconds" (sampling),
    "cost_seconds" (fit + distillation), "sigmas", "switch"}}. ``held_out``: (conditioning, seed) per prompt, the
    seeds the runner's other rows use for that prompt (``seeds`` images per prompt, one batch)."""
    size = tuple(kit.latent["samples"].shape[1:])
    out = {}
    for row in build_rows(kit, paper_switch, paper_loras, distill_options, eight_captions):
        t0 = time.perf_counter()
        lat = torch.cat([sample(kit.N, row, p, kit.negative, kit.cfg, seeds, seed, size) for p, seed in held_out])
        out[row.name] = dict(latent=lat, steps=len(row.sigmas) - 1, seconds=time.perf_counter() - t0,
                             cost_seconds=row.cost_seconds, sigmas=[round(float(s), 4) for s in row.sigmas],
                             switch=row.switch)
        print(f"{row.name}: sigmas {out[row.name]['sigmas']} switch {row.switch:.4f}; fit/distill {row.cost_seconds:.1f} s",
              flush=True)
    return out


def time_fit(kit: Kit, repeats: int = 3) -> dict:
    """The fit's cost next to one image: medians of ``repeats`` interleaved runs of one 50-step image (the stock
    KSampler, batch 1, Euler) and one Glance Fit Schedule (``FIT_ROLLOUTS`` rollouts of the default teacher, 5 + 5)."""
    one = {"samples": torch.zeros_like(kit.latent["samples"][:1])}
    t_one, t_fit = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        kit.N["KSampler"]().sample(kit.model, 0, 50, kit.cfg, "euler", "simple", kit.train_positive, kit.negative, one)
        t_one.append(time.perf_counter() - t0)
        t_fit.append(fit(kit, 5, 5)[2])
    one_image, one_fit = sorted(t_one)[len(t_one) // 2], sorted(t_fit)[len(t_fit) // 2]
    return dict(one_50_step_image_seconds=round(one_image, 3), fit_seconds=round(one_fit, 3),
                fit_in_50_step_images=round(one_fit / one_image, 2))
