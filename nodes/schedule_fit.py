"""Fitting a few-step schedule to a model: which points of its own fine schedule to step on.

1. Teacher rollouts (``teacher.py``): the guided model samples ``rollouts`` images with Euler on a fine schedule
   of N steps (e.g. 50), recording the state x_i and the guided velocity v_i at every point.
2. Local Euler error of a big step from point i straight to point k (i < k), averaged over the rollouts:
   ``e(i, k) = mean ||x_i + (s_k - s_i) v_i - x_k||^2``. Consecutive points cost 0 (that is the fine run itself).
3. Dynamic programming over paths 0 -> N of exactly n = steps_slow + steps_fast steps for the least total error.
   The switch is the node where the slow part ends: the path's node after ``steps_slow`` steps. Left free, it is
   wherever the best n-step path has that node (the DP over two-phase paths then equals the plain n-step DP,
   since the error does not depend on the phase). Given a switch sigma, the switch node is the fine point nearest
   to it, and the best ``steps_slow``-step path above it is joined to the best ``steps_fast``-step path below it.

The switch sigma handed to the sampler lies midway between the last slow and the first fast point, as the
published presets place theirs.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import comfy.samplers
import torch

from . import teacher

log = logging.getLogger("comfyui-glance")


# --- the error matrix and the path ----------------------------------------------------------------------------

def local_errors(x: torch.Tensor, velocity: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """e(i, k) for one rollout: [N+1, N+1] float64, +inf where i >= k.

    ``x`` [N+1, ...] the states, ``velocity`` [N, ...] the velocities at the first N points, ``sigmas`` [N+1]."""
    n = len(sigmas) - 1
    flat_x = x.reshape(n + 1, -1).double()
    flat_v = velocity.reshape(n, -1).double()
    s = sigmas.double().cpu()
    errors = torch.full((n + 1, n + 1), math.inf, dtype=torch.float64)
    for i in range(n):
        ds = (s[i + 1:] - s[i]).unsqueeze(1)
        predicted = flat_x[i].unsqueeze(0) + ds * flat_v[i].unsqueeze(0)
        errors[i, i + 1:] = ((predicted - flat_x[i + 1:]) ** 2).mean(dim=1)
    return errors


def least_error_path(errors: torch.Tensor, steps: int, start: int = 0, end: int | None = None) -> tuple[float, list[int]]:
    """The path start -> end of exactly ``steps`` steps (strictly increasing nodes) with the least summed error."""
    end = len(errors) - 1 if end is None else end
    if not 1 <= steps <= end - start:
        raise ValueError(f"a path from point {start} to {end} has 1 to {end - start} steps, not {steps}")
    e = errors.double()
    size = len(e)
    best = torch.full((size,), math.inf, dtype=torch.float64)
    best[start] = 0.0
    back = []
    for _ in range(steps):
        total = best.unsqueeze(1) + e  # [from, to]
        value, arg = total.min(dim=0)
        back.append(arg)
        best = value
    cost = float(best[end])
    if not math.isfinite(cost):
        raise ValueError(f"no finite {steps}-step path from point {start} to {end}")
    nodes = [end]
    for arg in reversed(back):
        nodes.append(int(arg[nodes[-1]]))
    nodes.reverse()
    return cost, nodes


@dataclass
class Path:
    nodes: list[int]  # indices into the fine schedule, 0 .. N
    error: float  # summed local error along the path
    switch_node: int  # nodes[steps_slow]


def fit_path(errors: torch.Tensor, steps_slow: int, steps_fast: int, switch_node: int | None = None) -> Path:
    """The least-error path of ``steps_slow`` + ``steps_fast`` steps; with ``switch_node``, through that node
    after exactly ``steps_slow`` steps."""
    n = len(errors) - 1
    if switch_node is None:
        cost, nodes = least_error_path(errors, steps_slow + steps_fast)
        return Path(nodes, cost, nodes[steps_slow])
    slow_cost, slow = least_error_path(errors, steps_slow, 0, switch_node)
    fast_cost, fast = least_error_path(errors, steps_fast, switch_node, n)
    return Path(slow + fast[1:], slow_cost + fast_cost, switch_node)


def path_error(errors: torch.Tensor, nodes: list[int]) -> float:
    return float(sum(errors[a, b] for a, b in zip(nodes[:-1], nodes[1:])))


def switch_between(sigmas: torch.Tensor, steps_slow: int) -> float:
    """The switch sigma for a schedule whose first ``steps_slow`` steps are slow: midway between the last slow and
    the first fast step's sigma (every slow step starts above it, every fast one at or below)."""
    return (float(sigmas[steps_slow - 1]) + float(sigmas[steps_slow])) / 2


def nearest_node(fine: torch.Tensor, sigma: float) -> int:
    """The interior fine-schedule point nearest to ``sigma``."""
    inner = fine[1:-1].double()
    return 1 + int(torch.argmin((inner - sigma).abs()))


def on_grid(fine: torch.Tensor, sigmas: torch.Tensor, tol: float = 1e-5) -> list[int] | None:
    """The fine-schedule indices of ``sigmas`` when every one of them is a fine point, else None."""
    nodes = []
    for s in sigmas.double():
        d = (fine.double() - s).abs()
        i = int(torch.argmin(d))
        if float(d[i]) > tol:
            return None
        nodes.append(i)
    return nodes


# --- the fit --------------------------------------------------------------------------------------------------

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
    fine_sigmas: torch.Tensor
    fit_error: float  # summed local Euler error along the fitted path, mean over rollouts
    plain_sigmas: torch.Tensor  # the scheduler's own schedule with the same number of steps
    plain_error: float | None  # its summed local error, when its points lie on the fine schedule
    model_passes: int
    seconds: float
    errors: torch.Tensor = field(repr=False, default=None)  # the mean error matrix


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


def fine_schedule(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).float().cpu()
    if len(sigmas) != steps + 1 or float(sigmas[-1]) != 0.0 or not torch.all(sigmas[1:] < sigmas[:-1]):
        raise ValueError(f"scheduler='{scheduler}' does not give {steps} distinct descending steps ending at 0 for this "
                         "model; pick another scheduler for the fine schedule (e.g. simple).")
    return sigmas


def fit_schedule(patcher, prompts: list, negative, latent: torch.Tensor, settings: FitSettings,
                 on_step: Callable[[int], None] | None = None, low_noise=None) -> ScheduleFit:
    """Teacher rollouts on the fine schedule, the mean error matrix, and the least-error path. With ``low_noise``
    (a second model, e.g. Wan 2.2's low-noise expert) the teacher is the pair, handing over where the schedule
    switches (``settings.switch_sigma``, required then): ``patcher`` runs the fine steps above the switch node,
    ``low_noise`` the rest, as Glance Phase KSampler will run the fitted schedule."""
    check_settings(settings)
    start = time.perf_counter()
    model_sampling = patcher.get_model_object("model_sampling")
    fine = fine_schedule(model_sampling, settings.scheduler, settings.fine_steps)
    switch_node = None
    if settings.switch_sigma is not None:
        switch_node = nearest_node(fine, settings.switch_sigma)
        if switch_node < settings.steps_slow or settings.fine_steps - switch_node < settings.steps_fast:
            raise ValueError(
                f"switch_sigma={settings.switch_sigma:g}: its nearest fine point ({float(fine[switch_node]):.4f}, point "
                f"{switch_node} of {settings.fine_steps}) leaves {switch_node} fine steps above it for steps_slow="
                f"{settings.steps_slow} and {settings.fine_steps - switch_node} below for steps_fast={settings.steps_fast}; "
                "move the switch, take fewer steps or raise fine_steps.")

    total = torch.zeros((len(fine), len(fine)), dtype=torch.float64)

    def add(r: teacher.Rollout) -> None:
        total.add_(local_errors(r.x, r.velocity, fine))

    handover = None
    if low_noise is not None:
        if switch_node is None:
            raise ValueError("model_low_noise: a second model needs the sigma where the pair hands over (switch_sigma).")
        handover = (float(fine[switch_node - 1]) + float(fine[switch_node])) / 2  # the fit's own switch rule
    passes = teacher.rollouts(patcher, prompts, negative, settings.cfg, latent, fine, settings.rollouts, settings.seed,
                              add, on_step, low_noise=low_noise, handover=handover)
    errors = total / settings.rollouts
    path = fit_path(errors, settings.steps_slow, settings.steps_fast, switch_node)
    sigmas = fine[path.nodes].clone()
    plain = comfy.samplers.calculate_sigmas(model_sampling, settings.scheduler,
                                            settings.steps_slow + settings.steps_fast).float().cpu()
    plain_nodes = on_grid(fine, plain)
    fit = ScheduleFit(
        sigmas=sigmas, switch_sigma=switch_between(sigmas, settings.steps_slow), nodes=path.nodes, fine_sigmas=fine,
        fit_error=path.error, plain_sigmas=plain,
        plain_error=path_error(errors, plain_nodes) if plain_nodes is not None else None,
        model_passes=passes, seconds=time.perf_counter() - start, errors=errors,
    )
    return fit


# --- what the schedule file records ---------------------------------------------------------------------------

def model_identity(patcher) -> dict:
    """What identifies the model a schedule was fitted to: its class and sampling, its size, the weight patches
    (e.g. LoRAs) on it, and a fingerprint of its base weights (SHA-256 over a strided sample of up to 8 tensors
    the patcher does not patch; None where the weights cannot be read)."""
    model = patcher.model
    model_sampling = patcher.get_model_object("model_sampling")
    params = list(model.diffusion_model.named_parameters())
    identity = {
        "model_class": type(model).__name__,
        "sampling": type(model_sampling).__name__,
        "shift": _number(getattr(model_sampling, "shift", None)),
        "sigma_max": _number(getattr(model_sampling, "sigma_max", None)),
        "latent_channels": getattr(model.latent_format, "latent_channels", None),
        "parameters": int(sum(p.numel() for _, p in params)),
        "weight_patches": len(patcher.patches),
        "fingerprint": None,
    }
    try:
        patched = {k[len("diffusion_model."):] for k in patcher.patches if isinstance(k, str)}
        chosen = [(n, p) for n, p in params if n not in patched]
        step = max(1, len(chosen) // 8)
        digest = hashlib.sha256()
        for name, p in chosen[::step][:8]:
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096]
            digest.update(name.encode())
            digest.update(sample.to("cpu", torch.float32).contiguous().numpy().tobytes())
        identity["fingerprint"] = digest.hexdigest()[:16]
    except Exception as e:  # weights not readable here (e.g. not materialised): the rest still identifies the model
        log.debug("Glance: no weights fingerprint (%s)", e)
    return identity


def _number(value):
    if value is None:
        return None
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return None


def identity_differences(saved: dict, current: dict) -> list[str]:
    """Fields in which two model identities differ (fields missing from either are not compared)."""
    return [f"{k} {saved[k]!r} vs {current[k]!r}" for k in saved
            if k in current and saved[k] is not None and current[k] is not None and saved[k] != current[k]]


def schedule_record(fit: ScheduleFit, settings: FitSettings, identity: dict, resolution: list[int], prompts: int) -> dict:
    """The JSON-serialisable record of a fit (the schedule file's content)."""
    return {
        "format": "glance-schedule",
        "version": 1,
        "sigmas": [float(s) for s in fit.sigmas],
        "switch_sigma": fit.switch_sigma,
        "steps_slow": settings.steps_slow,
        "steps_fast": settings.steps_fast,
        "model": identity,
        "resolution": resolution,
        "cfg": settings.cfg,
        "fine_steps": settings.fine_steps,
        "scheduler": settings.scheduler,
        "fine_points": fit.nodes,
        "rollouts": settings.rollouts,
        "prompts": prompts,
        "seed": settings.seed,
        "requested_switch_sigma": settings.switch_sigma,
        "fit_error": fit.fit_error,
        "plain_sigmas": [float(s) for s in fit.plain_sigmas],
        "plain_error": fit.plain_error,
        "model_passes": fit.model_passes,
        "seconds": round(fit.seconds, 3),
    }


def schedule_from_record(record: dict) -> tuple[torch.Tensor, float]:
    """(SIGMAS, switch sigma) of a schedule record; a ValueError saying what is wrong with a broken one."""
    if not isinstance(record, dict) or record.get("format") != "glance-schedule":
        raise ValueError("it is not a Glance schedule file (no \"format\": \"glance-schedule\")")
    try:
        sigmas = torch.tensor([float(s) for s in record["sigmas"]], dtype=torch.float32)
        switch = float(record["switch_sigma"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"its sigmas or switch_sigma are missing or not numbers ({e})") from None
    if sigmas.ndim != 1 or len(sigmas) < 2 or not torch.isfinite(sigmas).all() or not torch.all(sigmas[1:] < sigmas[:-1]):
        raise ValueError("its sigmas are not a descending schedule of at least 2 values")
    if not math.isfinite(switch):
        raise ValueError("its switch_sigma is not a number")
    return sigmas, switch
