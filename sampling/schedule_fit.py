"""What a schedule fit is made of: its settings and their checks, the fine schedule the teacher samples, the point
where a requested switch falls on it, and the result (``ScheduleFit``).

The fit itself (teacher rollouts, the sampler's own step errors, the path, the check) is
``sampler_schedule.py``; its path search is ``schedules/sampler_steps.py``. The switch sigma handed to the sampler
lies midway between the last slow and the first fast point, as the published presets place theirs
(``schedules/switch.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.samplers
import torch

from ..schedules.grid import nearest_node


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
    fit_error: float  # the sampler's summed step error along the fitted path, mean over rollouts
    plain_sigmas: torch.Tensor  # the scheduler's own schedule with the same number of steps
    plain_error: float | None  # its summed step error, when its points lie on the fine schedule
    model_passes: int
    seconds: float


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
