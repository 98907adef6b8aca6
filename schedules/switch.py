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


def pair_switch_problem(sigmas, switch_sigma: float, handover_sigma: float) -> str | None:
    """Why ``switch_sigma`` does not split ``sigmas`` where a pair of models (e.g. Wan 2.2 A14B's high- and low-noise
    experts) hands over at ``handover_sigma``, or None. The slow steps are the first model's and the fast ones the
    second's, so the switch must split the steps as ``handover_sigma`` itself does, or as Glance Fit Schedule holds
    the handover (the point of ``sigmas`` nearest ``handover_sigma`` is the first fast step)."""
    split = first_fast_step(sigmas, switch_sigma)
    inner = range(1, len(sigmas) - 1)
    nearest = min(inner, key=lambda k: abs(float(sigmas[k]) - handover_sigma)) if len(inner) else None
    if split in (first_fast_step(sigmas, handover_sigma), nearest):
        return None
    return (f"switch_sigma={switch_sigma:g} differs from handover_sigma={handover_sigma:g}: with model_low_noise the "
            "slow expert is trained on the first model and the fast expert on the second, so the schedule must switch "
            "where the pair hands over. Connect the SIGMAS and switch_sigma of Glance Fit Schedule run with the same "
            "model_low_noise and handover_sigma, or set switch_sigma to handover_sigma.")
