"""Checks of numbers and schedules users hand the pack (host-free): each error names the input and the fix."""
from __future__ import annotations

import math

import torch

MAX_STEPS = 10000  # steps of one sampling run: the phase sampler's cap, and a saved schedule's


def finite(value, input_name: str, fix: str) -> float:
    """``value`` as a float; an error naming the input when it is NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{input_name}={value!r} is not a number; {fix}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{input_name}={value!r} is not a finite number; {fix}.")
    return number


def check_sigmas(sigmas, input_name: str = "sigmas") -> torch.Tensor:
    """A SIGMAS input as a 1-D float tensor; an error naming the input when it is not one or holds NaN/inf.
    Ascending schedules stay allowed (unsampling runs them)."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
        raise ValueError(f"{input_name}: expected a SIGMAS schedule (a 1-D list of sigmas, e.g. from Glance Sigmas).")
    values = sigmas.detach().float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{input_name}: value {i} of the schedule is {float(values[i])} (not finite); connect a "
                         "schedule of finite sigmas (check the node that made it).")
    return sigmas
