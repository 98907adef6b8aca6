"""Sigma schedules for Glance: the published presets and split schedules built from a model's own scheduler."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .paper_timesteps import FLUX_DEV, QWEN_IMAGE
from .switch import switch_between


@dataclass(frozen=True)
class Preset:
    name: str
    sigmas: tuple[float, ...]
    steps_slow: int

    @property
    def switch_sigma(self) -> float:
        """Midway between the last slow-step sigma and the first fast-step sigma."""
        return round(switch_between(self.sigmas, self.steps_slow), 6)


# The paper's training timesteps as a consistent schedule (t = 1000 * sigma), 5 slow + 5 fast steps: one table
# (schedules/paper_timesteps.py) serves these presets and the trainer's phases.
PRESETS = {
    p.name: p
    for p in (
        Preset("qwen_image_glance", QWEN_IMAGE.sigmas(), len(QWEN_IMAGE.slow)),  # mu 0.6935, shift_terminal 0.02
        Preset("flux_dev_glance", FLUX_DEV.sigmas(), len(FLUX_DEV.slow)),  # mu 1.15
    )
}
SPLIT = "split_from_model_scheduler"
# Wan 2.2 A14B hands over from its high-noise to its low-noise expert at a boundary timestep (875 for T2V, 900 for
# I2V; sigma = t / 1000): a split of the model's own scheduler with the switch held there, so that Glance Phase
# KSampler's two models are the two experts (steps starting at or below the boundary run on the low-noise one).
BOUNDARY_SPLITS = {"wan22_t2v_boundary_0.875": 0.875, "wan22_i2v_boundary_0.9": 0.9}
PRESET_NAMES = [*PRESETS, SPLIT, *BOUNDARY_SPLITS]


def preset_sigmas(name: str) -> tuple[torch.Tensor, float]:
    preset = PRESETS[name]
    return torch.tensor(preset.sigmas, dtype=torch.float32), preset.switch_sigma


def split_sigmas(dense: torch.Tensor, switch_sigma: float, steps_slow: int, steps_fast: int) -> torch.Tensor:
    """Resample a model's dense schedule into ``steps_slow`` steps above ``switch_sigma`` and ``steps_fast`` below.

    ``dense`` is the model's own schedule (e.g. 1000 steps of its scheduler, descending, ending at 0); each
    phase takes points evenly spaced in that schedule's step index, so the scheduler's shape is kept.
    """
    if steps_slow < 1 or steps_fast < 1:
        raise ValueError(f"steps_slow and steps_fast must be at least 1 (got {steps_slow}, {steps_fast}).")
    dense = dense.detach().to(torch.float64).cpu()
    sigma_max, sigma_end = float(dense[0]), float(dense[-1])
    if not (sigma_end < switch_sigma < sigma_max):
        raise ValueError(
            f"switch_sigma={switch_sigma:g} must lie inside the model's schedule ({sigma_end:g}, {sigma_max:g}); "
            "pick a value between them, e.g. 0.9 for flow models."
        )
    # Fractional index where the dense schedule crosses the switch sigma (schedules are descending).
    idx = torch.arange(len(dense), dtype=torch.float64)
    position = float(_interp(torch.tensor([switch_sigma]), dense.flip(0), idx.flip(0))[0])
    slow_pos = torch.linspace(0.0, position, steps_slow + 1)
    fast_pos = torch.linspace(position, len(dense) - 1, steps_fast + 1)[1:]
    positions = torch.cat([slow_pos, fast_pos])
    sigmas = _interp(positions, idx, dense)
    sigmas[steps_slow] = switch_sigma
    return sigmas.to(torch.float32)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """numpy.interp for increasing ``xp``."""
    x = x.to(torch.float64)
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = torch.where(x1 > x0, (x - x0) / (x1 - x0), torch.zeros_like(x))
    return y0 + w * (y1 - y0)

