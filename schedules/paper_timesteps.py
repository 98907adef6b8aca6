"""The paper's timesteps: ONE table, read by the trainer's phases and by the sampler's presets.

Glance (arXiv 2512.02899) trains the Slow-LoRA at steps 1, 3, 5, 7, 9 and the Fast-LoRA at steps 11, 21, 31, 41, 50
of the base model's default 50-step schedule at 1024x1024, and samples 5 slow + 5 fast steps at those same points.
t = 1000 * sigma, shift already applied (Qwen-Image: mu 0.6935, shift_terminal 0.02; FLUX.1-dev: mu 1.15).
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEDULE_STEPS = 50  # the base model's default schedule the phases are picked from
SLOW_STEPS = (1, 3, 5, 7, 9)  # 1-based steps of that schedule
FAST_STEPS = (11, 21, 31, 41, 50)


@dataclass(frozen=True)
class PaperTimesteps:
    model: str
    slow: tuple[float, ...]  # t of the Slow-LoRA's phase
    fast: tuple[float, ...]  # t of the Fast-LoRA's phase

    def sigmas(self) -> tuple[float, ...]:
        """The 10-step sampling schedule through the same points: slow, then fast, then 0."""
        return tuple(t / 1000.0 for t in self.slow + self.fast) + (0.0,)


QWEN_IMAGE = PaperTimesteps(
    "Qwen-Image",
    slow=(1000.0, 979.1915, 957.5157, 934.9171, 911.3354),
    fast=(886.7053, 745.0728, 562.9505, 320.0802, 20.0),
)
FLUX_DEV = PaperTimesteps(
    "FLUX.1-dev",
    slow=(1000.0, 986.9786, 973.2042, 958.6094, 943.1188),
    fast=(926.6473, 825.7017, 677.9868, 441.1997, 60.5503),
)
