"""Where a two-phase schedule switches: which steps are slow, which fast, and the switch sigma between them.

One rule serves the sampler, the fit, the presets and the distiller: a step belongs to the slow phase when its
starting sigma is above the switch sigma; the switch sigma a schedule hands on lies midway between its last slow and
its first fast step.
"""
from __future__ import annotations

import math

SWITCH_SIGMA_MAX = 1000.0
EXPERTS = ("slow", "fast")  # the two phases of a schedule, in sampling order


def switch_sigma_problem(switch_sigma, name: str = "switch_sigma") -> str | None:
    """Why ``switch_sigma`` is unusable (NaN, negative, too large), or None."""
    if switch_sigma is None or not math.isfinite(switch_sigma) or switch_sigma < 0:
        return (f"{name}={switch_sigma!r} is not a valid sigma: use a finite value >= 0 "
                "(flow models run from sigma 1 to 0; the Glance presets switch near 0.9).")
    if switch_sigma > SWITCH_SIGMA_MAX:
        return f"{name}={switch_sigma!r} is above {SWITCH_SIGMA_MAX:g}; flow models run from sigma 1 to 0."
    return None


def validate_switch_sigma(switch_sigma: float, name: str = "switch_sigma") -> float:
    problem = switch_sigma_problem(switch_sigma, name)
    if problem:
        raise ValueError(problem)
    return float(switch_sigma)


def first_fast_step(sigmas, switch_sigma: float) -> int:
    """Index of the first step whose starting sigma is at or below ``switch_sigma`` (== steps if none)."""
    steps = len(sigmas) - 1
    for k in range(steps):
        if float(sigmas[k]) <= switch_sigma:
            return k
    return steps


def phase_steps(sigmas, switch_sigma: float) -> dict[str, list[int]]:
    """The step indices j (step from sigmas[j] to sigmas[j+1]) of each phase."""
    k = first_fast_step(sigmas, switch_sigma)
    return {"slow": list(range(k)), "fast": list(range(k, len(sigmas) - 1))}


def switch_between(sigmas, steps_slow: int) -> float:
    """The switch sigma of a schedule whose first ``steps_slow`` steps are slow: midway between the last slow and the
    first fast step's sigma (every slow step starts above it, every fast one at or below)."""
    return (float(sigmas[steps_slow - 1]) + float(sigmas[steps_slow])) / 2
