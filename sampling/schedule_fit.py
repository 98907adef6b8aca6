"""Fitting a few-step schedule to a model: which points of its own fine schedule to step on.

1. Teacher rollouts (``teacher.py``): the guided model samples ``rollouts`` images with Euler on a fine schedule
   of N steps (e.g. 50), recording the state x_i and the guided velocity v_i at every point.
2. Local Euler error of a big step from point i straight to point k (i < k), averaged over the rollouts, and the
   least-error path of steps_slow + steps_fast steps through the fine points (``schedules/search.py``). Given a
   switch sigma, the switch node is the fine point nearest to it.
3. The record (``schedules/records.py``) saved as a schedule file (``schedules/files.py``).

The switch sigma handed to the sampler lies midway between the last slow and the first fast point, as the
published presets place theirs (``schedules/switch.py``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import comfy.samplers
import torch

from ..schedules.search import fit_path, local_errors, nearest_node, on_grid, path_error
from ..schedules.switch import switch_between
from . import teacher

log = logging.getLogger("comfyui-glance")


@dataclass
class FitSettings:
    cfg: float
    steps_slow: int
    steps_fast: int
    fine_steps: int
    scheduler: str
    rollouts: int
    seed: int
    switch_sigma: float | None = None  # None: the fit chooses


@dataclass
class ScheduleFit:
    sigmas: torch.Tensor  # the fitted schedule, steps_slow + steps_fast + 1 values, ending at 0
    switch_sigma: float
    nodes: list[int]
    fit_error: float  # summed local Euler error along the fitted path, mean over rollouts
    plain_sigmas: torch.Tensor  # the scheduler's own schedule with the same number of steps
    plain_error: float | None  # its summed local error, when its points lie on the fine schedule
    model_passes: int
    seconds: float
    errors: torch.Tensor = field(repr=False, default=None)  # the mean error matrix


@dataclass
class FitOutcome:
    fit: ScheduleFit
    file_name: str  # relative to the schedules folder
    record: dict


def check_settings(s: FitSettings) -> None:
    """Clear errors for settings no schedule can be fitted with (names are the node's input names)."""
    if s.steps_slow < 1 or s.steps_fast < 1:
        raise ValueError(f"steps_slow={s.steps_slow}, steps_fast={s.steps_fast}: each phase needs at least 1 step.")
    if s.steps_slow + s.steps_fast > s.fine_steps:
        raise ValueError(f"steps_slow + steps_fast = {s.steps_slow + s.steps_fast} is more than fine_steps={s.fine_steps}: "
                         "the fitted steps are chosen among the fine schedule's points; raise fine_steps (e.g. 50) or take fewer steps.")
    if s.rollouts < 1:
        raise ValueError(f"rollouts={s.rollouts}: at least 1 teacher rollout is needed (8 is a good number).")
    if not math.isfinite(s.cfg):
        raise ValueError(f"cfg={s.cfg!r} is not a number; use the CFG scale you sample with.")
    if s.scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise ValueError(f"scheduler='{s.scheduler}' is not one of the host's schedulers: {', '.join(comfy.samplers.SCHEDULER_NAMES)}.")


def check_switch_in_range(model, switch_sigma: float | None) -> None:
    """A clear error for a switch sigma outside the model's sigma range (None: the fit places the switch)."""
    if switch_sigma is None:
        return
    top = float(model.get_model_object("model_sampling").sigma_max)
    if not 0.0 < switch_sigma < top:
        raise ValueError(f"switch_sigma={switch_sigma:g} is outside this model's sigma range (0, {top:g}); "
                         "give a sigma inside it, or 0 to let the fit place the switch.")


def fine_schedule(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).float().cpu()
    if len(sigmas) != steps + 1 or float(sigmas[-1]) != 0.0 or not torch.all(sigmas[1:] < sigmas[:-1]):
        raise ValueError(f"scheduler='{scheduler}' does not give {steps} distinct descending steps ending at 0 for this "
                         "model; pick another scheduler for the fine schedule (e.g. simple).")
    return sigmas


def switch_node(fine: torch.Tensor, settings: FitSettings) -> int | None:
    if settings.switch_sigma is None:
        return None
    node = nearest_node(fine, settings.switch_sigma)
    if node < settings.steps_slow or settings.fine_steps - node < settings.steps_fast:
        raise ValueError(
            f"switch_sigma={settings.switch_sigma:g}: its nearest fine point ({float(fine[node]):.4f}, point "
            f"{node} of {settings.fine_steps}) leaves {node} fine steps above it for steps_slow="
            f"{settings.steps_slow} and {settings.fine_steps - node} below for steps_fast={settings.steps_fast}; "
            "move the switch, take fewer steps or raise fine_steps.")
    return node


def fit_schedule(patcher, prompts: list, negative, latent: torch.Tensor, settings: FitSettings,
                 on_step: Callable[[int], None] | None = None) -> ScheduleFit:
    """Teacher rollouts on the fine schedule, the mean error matrix, and the least-error path."""
    check_settings(settings)
    start = time.perf_counter()
    model_sampling = patcher.get_model_object("model_sampling")
    fine = fine_schedule(model_sampling, settings.scheduler, settings.fine_steps)
    node = switch_node(fine, settings)
    total = torch.zeros((len(fine), len(fine)), dtype=torch.float64)
    passes = teacher.rollouts(patcher, prompts, negative, settings.cfg, latent, fine, settings.rollouts, settings.seed,
                              lambda r: total.add_(local_errors(r.x, r.velocity, fine)), on_step)
    errors = total / settings.rollouts
    path = fit_path(errors, settings.steps_slow, settings.steps_fast, node)
    sigmas = fine[path.nodes].clone()
    plain = comfy.samplers.calculate_sigmas(model_sampling, settings.scheduler,
                                            settings.steps_slow + settings.steps_fast).float().cpu()
    plain_nodes = on_grid(fine, plain)
    return ScheduleFit(
        sigmas=sigmas, switch_sigma=switch_between(sigmas, settings.steps_slow), nodes=path.nodes,
        fit_error=path.error, plain_sigmas=plain,
        plain_error=path_error(errors, plain_nodes) if plain_nodes is not None else None,
        model_passes=passes, seconds=time.perf_counter() - start, errors=errors,
    )
