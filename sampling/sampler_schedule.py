"""The fit for a sampler: a converged teacher, the sampler's own step errors (history included), the path, and a
check of both on the host's own sampler.

1. Teacher rollouts (``teacher.py``) on the fine schedule with ``TEACHER_SAMPLER`` (second order: at the same
   number of steps it lands far closer to the converged picture than Euler), recording X_i and D_i at every point.
2. The path (``default_method``): for Euler, a dynamic programme on the sampler's own states over the first
   ``DP_ROLLOUTS`` rollouts and a grid of about ``DP_GRID_STEPS`` fine points (``dp_grid``); for the multistep
   samplers, the least-error path of the mean Gram matrix of the teacher's vectors (every step's error for the
   sampler, history included: ``schedules/sampler_steps.py``; no model pass), refined by at most ``REFINE_RUNS``
   runs of the sampler against the teacher's end states.
3. Checks, on the first ``check_rollouts`` rollouts: the teacher again at HALF the fine steps (from how far that
   moves it, a bound on how far doubling would: the teacher counts as converged when that is under a tenth of the
   fitted schedule's error), and the host's own sampler on the fitted schedule and on the plain one (their end
   errors to the teacher, the numbers the log and the schedule file report).

At the node's defaults (4 rollouts of 100 kl_optimal steps, 5 + 5 steps) the whole fit takes at most the model
passes of 16 single 50-step images (tests/test_sampler_fit.py counts them from outside).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import torch

from ..host_compat import latent_downscale
from ..schedules import files, sampler_steps
from ..schedules.records import latent_resolution, model_identity, schedule_record
from ..schedules.grid import on_grid
from ..schedules.switch import switch_between
from . import schedule_fit, teacher

log = logging.getLogger("comfyui-glance")

TEACHER_SAMPLER = "dpmpp_2m"
CHECK_ROLLOUTS = 1  # rollouts the check samples again (the first ones: with several prompts, the first prompts)
CONVERGED_RATIO = 0.1  # doubling the teacher's steps must move its result by less than this share of the fitted error
HALVED_TO_DOUBLED = 0.25  # doubling moves a solver of order >= 1 at most a quarter as far as halving (squared)


@dataclass
class Check:
    rollouts: int
    teacher_shift: float  # bound on the mean squared distance between the teacher at fine_steps and at 2 x fine_steps
    fitted_error: float  # the sampler on the fitted schedule, to the doubled teacher
    plain_error: float  # the sampler on the plain schedule of the same scheduler and steps
    converged: bool
    passes: int
    halved_shift: float | None = None  # measured: the teacher at fine_steps // 2 to the teacher at fine_steps


@dataclass
class SamplerFit:
    fit: schedule_fit.ScheduleFit
    sampler: str
    check: Check | None
    extras: dict = field(default_factory=dict)


def _end_states(patcher, positive, negative, cfg, latent, sigmas, seeds, sampler_name, pair=(None, None)) -> torch.Tensor:
    """What the host's sampler ``sampler_name`` samples over ``sigmas`` from the noise of each seed (one batch);
    ``pair``: (low-noise model, handover sigma) when the teacher is a pair of experts."""
    guider = teacher.teacher_guider(patcher, positive, negative, cfg, *pair)
    noise = torch.cat([comfy.sample.prepare_noise(latent, seed) for seed in seeds])
    out = guider.sample(noise, latent.expand(len(seeds), *latent.shape[1:]).contiguous(),
                        comfy.samplers.sampler_object(sampler_name), sigmas, disable_pbar=True, seed=seeds[0])
    return patcher.model.process_latent_in(out).float().cpu()  # in the space the sampler steps in (the teacher's)


def _pair_denoiser(patcher, prompts, negative, cfg, latent, low_noise=None, handover=None):
    """``_denoiser`` of ``patcher``, or with ``low_noise`` of the pair: points above ``handover`` on ``patcher``, the
    rest on ``low_noise`` (as the phase guider picks the model of a step by its starting sigma)."""
    high = _denoiser(patcher, prompts, negative, cfg, latent)
    if low_noise is None:
        return high
    low = _denoiser(low_noise, prompts, negative, cfg, latent)

    def evaluate(b: int, xs: list, ss: list) -> list:
        out = [None] * len(ss)
        for model, picked in ((high, [m for m, s in enumerate(ss) if s > handover]),
                              (low, [m for m, s in enumerate(ss) if s <= handover])):
            if picked:
                for m, d in zip(picked, model(b, [xs[m] for m in picked], [ss[m] for m in picked])):
                    out[m] = d
        return out
    return evaluate


def _denoiser(patcher, prompts, negative, cfg, latent):
    """evaluate(b, xs, ss) for ``sampler_steps.student_state_path``: the guided model's denoised prediction for
    prompt b at states xs[m] (in the sampler's space) and sigmas ss[m], through the host's own guider (a
    ``KSAMPLER`` whose function only evaluates the model it is handed)."""
    def evaluate(b: int, xs: list, ss: list) -> list:
        out = []

        def run(model, x, sigmas, extra_args=None, callback=None, disable=None):
            for xm, sm in zip(xs, ss):
                mm.throw_exception_if_processing_interrupted()
                xm = xm.to(x.device, x.dtype)
                out.append(model(xm, sm * xm.new_ones([xm.shape[0]]), **(extra_args or {})).double().cpu())
            return x

        rows = xs[0].shape[0]
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(prompts[b], negative)
        guider.set_cfg(cfg)
        blank = latent.expand(rows, *latent.shape[1:]).contiguous()
        guider.sample(torch.zeros_like(blank), blank, comfy.samplers.KSAMPLER(run), torch.tensor([max(ss), 0.0]),
                      disable_pbar=True, seed=0)
        return out
    return evaluate


STUDENT_STATE = "student-state"
DP_ROLLOUTS = 4  # rollouts whose states the student-state path follows (the first: with several prompts, one each)
DP_GRID_STEPS = 25  # the student-state path picks among about this many points of the fine schedule (evenly spaced)
DP_WINDOW = 4  # ... within this many of them of the teacher-local path after as many steps
TEACHER_LOCAL = "teacher-local"
REFINED = "refined"  # the teacher-local path, then refined against the sampler's true end error
REFINE_RUNS = 12  # at most this many runs of the sampler over REFINE_ROLLOUTS rollouts (n steps each) refine a path
REFINE_ROLLOUTS = 2
REFINE_SWEEPS = 3  # sweeps of the refinement over the path's points (each tries one fine point earlier and later)


def refine_path(end_error: Callable[[list[int]], float], nodes: list[int], fixed: set[int] = frozenset(),
                sweeps: int = REFINE_SWEEPS, budget: int | None = None) -> tuple[list[int], float, int]:
    """Derivative-free refinement of a path on the fine grid against the TRUE end error of the sampler (its own
    states, history and error propagation included): each interior point in turn moves one fine point up or down
    while that lowers ``end_error``; ``fixed`` positions stay; at most ``budget`` calls of ``end_error``. Returns
    (points, end error, evaluations)."""
    best = end_error(nodes)
    calls = 1
    for _ in range(sweeps):
        moved = False
        for pos in range(1, len(nodes) - 1):
            if pos in fixed:
                continue
            for delta in (-1, 1):
                while budget is None or calls < budget:
                    cand = list(nodes)
                    cand[pos] += delta
                    if not cand[pos - 1] < cand[pos] < cand[pos + 1]:
                        break
                    err = end_error(cand)
                    calls += 1
                    if err >= best:
                        break
                    nodes, best, moved = cand, err, True
        if not moved:
            break
    return nodes, best, calls


def dp_grid(fine_steps: int, steps: int, through: tuple[int, int] | None = None) -> list[int]:
    """The fine points the student-state path may step on: every k-th (about ``DP_GRID_STEPS`` steps, at least
    ``steps``; the last point always). When the switch is held (``through``: ``through[0]`` steps to fine point
    ``through[1]``) the switch point too, and each side of it keeps at least as many points as it has steps (a
    finer stride there where the switch is near an end). Each step of that path evaluates the model at every point
    it may be at, so a coarser grid costs proportionally fewer passes."""
    stride = max(1, min(round(fine_steps / DP_GRID_STEPS), fine_steps // steps))
    if through is None:
        return sorted(set(range(0, fine_steps + 1, stride)) | {fine_steps})
    above, at = through
    stride_above = max(1, min(stride, at // above))
    stride_below = max(1, min(stride, (fine_steps - at) // max(1, steps - above)))
    points = set(range(0, at, stride_above)) | set(range(at, fine_steps + 1, stride_below)) | {at, fine_steps}
    return sorted(points)


def dp_window(grid: list[int], nodes: list[int]) -> list[tuple[int, int]]:
    """Per step j of the student-state path, the grid positions it may be at: within ``DP_WINDOW`` of where the
    teacher-local path ``nodes`` (fine points, no model pass) is after j steps."""
    out = []
    for k in nodes[1:]:
        at = min(range(len(grid)), key=lambda q: abs(grid[q] - k))
        out.append((at - DP_WINDOW, at + DP_WINDOW))
    return out


def default_method(sampler: str) -> str:
    """Euler: the path on the sampler's own states; the multistep samplers: the teacher-local path refined on the
    true end error (measured by benchmarks/repro/schedules.py: on the demo kit the student-state path carries one
    state per point, so a multistep sampler's history is chosen greedily, and it fitted dpmpp_2m at 6 steps no
    better than stock, 19.4 dB, where the teacher-local path gave 21.5 to 23.1; for Euler it was 0.3 to 1.7 dB
    ahead)."""
    return STUDENT_STATE if sampler == "euler" else REFINED


@dataclass
class _TeacherData:
    """What the fit keeps of the teacher's rollouts: every step's error for the sampler, the end states (for the
    check and the refinement) and, for the student-state path, each prompt's states."""
    errors: torch.Tensor
    ends: dict[int, torch.Tensor]
    states: dict[int, list]
    passes: int


def _summed_error(e: torch.Tensor, nodes: list[int]) -> float:
    """The sampler's summed step error along ``nodes`` (a step's error depends on the point before it: history)."""
    return float(sum(e[h + 1, i, k] for h, i, k in zip([-1] + nodes[:-2], nodes[:-1], nodes[1:])))


def fit_for_sampler(patcher, prompts: list, negative, latent: torch.Tensor, settings: schedule_fit.FitSettings,
                    sampler: str, on_step: Callable[[int], None] | None = None, check_rollouts: int | None = None,
                    teacher_sampler: str = TEACHER_SAMPLER, method: str | None = None, low_noise=None) -> SamplerFit:
    """The fit of ``settings`` for ``sampler`` (module docstring). With ``low_noise`` (a second model, e.g. Wan 2.2's
    low-noise expert) the teacher is the pair, handing over where the schedule switches (``settings.switch_sigma``,
    required then): ``patcher`` above it, ``low_noise`` below, as Glance Phase KSampler will run the schedule."""
    sampler_steps.check_sampler(sampler)
    schedule_fit.check_settings(settings)
    teacher.check_rollouts_cover_prompts(len(prompts), settings.rollouts)
    method = method or default_method(sampler)
    if method not in (STUDENT_STATE, TEACHER_LOCAL, REFINED):
        raise ValueError(f"method={method!r}: {STUDENT_STATE}, {TEACHER_LOCAL} or {REFINED}")
    start = time.perf_counter()
    model_sampling = patcher.get_model_object("model_sampling")
    fine = schedule_fit.fine_schedule(model_sampling, settings.scheduler, settings.fine_steps)
    n = settings.steps_slow + settings.steps_fast
    node = schedule_fit.switch_node(fine, settings)
    through = None if node is None else (settings.steps_slow, node)
    pair = (None, None)
    if low_noise is not None:
        if through is None:
            raise ValueError("model_low_noise: a second model needs the sigma where the pair hands over (switch_sigma).")
        pair = (low_noise, (float(fine[node - 1]) + float(fine[node])) / 2)  # the fit's own switch rule
    data = _teacher_data(patcher, prompts, negative, latent, settings, fine, sampler, teacher_sampler, method, pair,
                         on_step)
    nodes, passes = _path(patcher, prompts, negative, latent, settings, fine, sampler, method, pair, through, data)
    sigmas = fine[nodes].clone()
    plain = comfy.samplers.calculate_sigmas(model_sampling, settings.scheduler, n).float().cpu()
    plain_nodes = on_grid(fine, plain)
    fit = schedule_fit.ScheduleFit(
        sigmas=sigmas, nodes=nodes,
        # With a pair of experts the switch is where the teacher handed over (between the same two fitted points),
        # so Glance Phase KSampler runs each step on the model the teacher ran it on.
        switch_sigma=pair[1] if pair[0] is not None else switch_between(sigmas, settings.steps_slow),
        fit_error=_summed_error(data.errors, nodes), plain_sigmas=plain,
        plain_error=_summed_error(data.errors, plain_nodes) if plain_nodes is not None else None,
        model_passes=data.passes + passes, seconds=0.0)
    check = None
    count = min(CHECK_ROLLOUTS if check_rollouts is None else check_rollouts, settings.rollouts)
    if count > 0:
        check = _check(patcher, prompts, negative, latent, settings, sampler, teacher_sampler, sigmas, plain, data.ends,
                       count, pair)
        fit.model_passes += check.passes
    fit.seconds = time.perf_counter() - start
    return SamplerFit(fit=fit, sampler=sampler, check=check, extras={"method": method})


def _teacher_data(patcher, prompts, negative, latent, settings, fine, sampler, teacher_sampler, method, pair,
                  on_step) -> _TeacherData:
    """The teacher's rollouts on the fine schedule, reduced as they finish to the mean Gram matrix of their states and
    denoised predictions (every step's error for ``sampler``), their end states and, where the path needs them, their
    states."""
    size = 2 * settings.fine_steps + 1
    g = torch.zeros((size, size), dtype=torch.float64)
    data = _TeacherData(errors=g, ends={}, states={}, passes=0)

    def add(r: teacher.Rollout) -> None:
        denoised = r.x[:-1] - fine[:-1].view(-1, *[1] * (r.x.dim() - 1)) * r.velocity
        g.add_(sampler_steps.gram(r.x, denoised))
        data.ends[r.seed - settings.seed] = r.x[-1]
        if method == STUDENT_STATE and r.seed - settings.seed < DP_ROLLOUTS:
            data.states.setdefault(r.prompt, []).append(r.x)

    data.passes = teacher.rollouts(patcher, prompts, negative, settings.cfg, latent, fine, settings.rollouts,
                                   settings.seed, add, on_step, sampler=teacher_sampler, low_noise=pair[0],
                                   handover=pair[1])
    data.errors = sampler_steps.step_errors(g / settings.rollouts, fine, sampler)
    return data


def _path(patcher, prompts, negative, latent, settings, fine, sampler, method, pair, through,
          data: _TeacherData) -> tuple[list[int], int]:
    """The fitted path's fine points by ``method``, and the model passes its search took."""
    n = settings.steps_slow + settings.steps_fast
    counter = teacher.PassCounter()
    _, nodes = sampler_steps.least_error_path(data.errors, n, through)
    if method == STUDENT_STATE:
        order = sorted(data.states)
        grid = dp_grid(settings.fine_steps, n, through)
        evaluate = _pair_denoiser(counter.attach(patcher), [prompts[p] for p in order], negative, settings.cfg, latent,
                                  counter.attach(pair[0]) if pair[0] is not None else None, pair[1])
        on = None if through is None else (through[0], grid.index(through[1]))
        _, picked, _ = sampler_steps.student_state_path(
            evaluate, [torch.stack(data.states[p])[:, grid] for p in order], fine[grid], sampler, n, on,
            window=dp_window(grid, nodes))
        return [grid[i] for i in picked], counter.passes
    if method == REFINED:
        counted = counter.attach(patcher)
        used = min(REFINE_ROLLOUTS, settings.rollouts)
        groups = [(p, list(range(p, used, len(prompts)))) for p in range(min(len(prompts), used))]

        def end_error(candidate: list[int]) -> float:
            total = 0.0
            for p, rs in groups:
                mm.throw_exception_if_processing_interrupted()
                out = _end_states(counted, prompts[p], negative, settings.cfg, latent, fine[candidate],
                                  [settings.seed + r for r in rs], sampler, pair)
                total += float(((out - torch.stack([data.ends[r] for r in rs])) ** 2).reshape(len(rs), -1).mean(1).sum())
            return total / used

        nodes, _, _ = refine_path(end_error, nodes, {through[0]} if through else set(), budget=REFINE_RUNS)
    return nodes, counter.passes


def _check(patcher, prompts, negative, latent, settings, sampler, teacher_sampler, sigmas, plain, ends, count,
           pair=(None, None)) -> Check:
    """The teacher at HALF the fine steps, the fitted and the plain schedule on the first ``count`` rollouts
    (rollout r: prompt r mod len(prompts), seed + r, as the teacher's), each to the teacher's own end state.

    How far doubling the teacher's steps would move it is bounded from how far halving them moved it, at a quarter
    of a doubled teacher's passes: a solver of order p moves 2^-p as far when its steps double as when they halve
    (squared distances: 4^-p), so with p >= 1 a quarter of the halved shift bounds the doubled one
    (``HALVED_TO_DOUBLED``; on the demo kit halving moved the dpmpp_2m teacher 4.0 to 11.8 times as far as
    doubling did)."""
    counter = teacher.PassCounter()
    counted = counter.attach(patcher)
    pair = (counter.attach(pair[0]), pair[1]) if pair[0] is not None else pair
    model_sampling = patcher.get_model_object("model_sampling")
    halved = schedule_fit.fine_schedule(model_sampling, settings.scheduler, max(1, settings.fine_steps // 2))
    shift = fitted = plain_error = 0.0
    for r in range(count):
        mm.throw_exception_if_processing_interrupted()
        p = prompts[r % len(prompts)]
        seeds = [settings.seed + r]
        ref = ends[r].unsqueeze(0)
        shift += float(((_end_states(counted, p, negative, settings.cfg, latent, halved, seeds, teacher_sampler, pair) - ref) ** 2).mean())
        fitted += float(((_end_states(counted, p, negative, settings.cfg, latent, sigmas, seeds, sampler, pair) - ref) ** 2).mean())
        plain_error += float(((_end_states(counted, p, negative, settings.cfg, latent, plain, seeds, sampler, pair) - ref) ** 2).mean())
    shift, fitted, plain_error = shift / count, fitted / count, plain_error / count
    doubled = shift * HALVED_TO_DOUBLED
    return Check(rollouts=count, teacher_shift=doubled, fitted_error=fitted, plain_error=plain_error,
                 converged=doubled < CONVERGED_RATIO * fitted, passes=counter.passes, halved_shift=shift)


def teacher_record(result: SamplerFit, settings: schedule_fit.FitSettings) -> dict:
    """What the schedule file adds about the sampler and the teacher (and how converged it was)."""
    c = result.check
    return {
        "sampler": result.sampler,
        "method": result.extras.get("method"),
        "teacher": {
            "sampler": TEACHER_SAMPLER,
            "steps": settings.fine_steps,
            "scheduler": settings.scheduler,
            "check_rollouts": c.rollouts if c else 0,
            "doubled_steps_shift": c.teacher_shift if c else None,
            "halved_steps_shift": c.halved_shift if c else None,
            "fitted_end_error": c.fitted_error if c else None,
            "plain_end_error": c.plain_error if c else None,
            "converged": c.converged if c else None,
            "rule": f"doubling the teacher's steps moves its result by less than {CONVERGED_RATIO:g} x the fitted "
                    "schedule's end error (mean squared latent distances, to the teacher); the doubled shift is "
                    f"bounded by {HALVED_TO_DOUBLED:g} x the halved one (a solver of order >= 1)",
        },
    }


def fit_and_save(patcher, prompts: list, negative, latent: torch.Tensor, settings: schedule_fit.FitSettings,
                 schedules_dir: Path, save_name: str = "", sampler: str = "euler",
                 on_progress: Callable[[int, int], None] | None = None, low_noise=None) -> schedule_fit.FitOutcome:
    """The fit for ``sampler``, start to end: checks, the save name (empty: named after the model, size, cfg and
    steps), the fit, and its record saved in ``schedules_dir``. ``on_progress(done, total)`` counts the teacher's
    rollout-steps."""
    sampler_steps.check_sampler(sampler)
    schedule_fit.check_settings(settings)
    schedule_fit.check_switch_in_range(patcher, settings.switch_sigma)
    identity = model_identity(patcher)
    resolution = latent_resolution(latent, latent_downscale(patcher))
    if not (save_name or "").strip():
        save_name = files.auto_name(identity["model_class"], identity["fingerprint"], *resolution, settings.cfg,
                                    settings.steps_slow, settings.steps_fast)
    file_name, path = files.resolve_save_path(save_name, schedules_dir)
    log.info("Glance fit for %s: %d rollouts of %d %s steps at cfg %g, %dx%d px, %d prompt(s)", sampler,
             settings.rollouts, settings.fine_steps, settings.scheduler, settings.cfg, *resolution, len(prompts))
    if len(prompts) == 1:
        log.info("Glance fit: one prompt; a schedule fitted to one prompt fits mostly that prompt. For a schedule "
                 "that serves your prompts, join several typical ones with Conditioning (Combine).")
    total = settings.rollouts * settings.fine_steps
    on_step = None if on_progress is None else (lambda done: on_progress(min(done, total), total))
    result = fit_for_sampler(patcher, prompts, negative, latent, settings, sampler, on_step, low_noise=low_noise)
    fit = result.fit
    record = schedule_record(fit, settings, identity, resolution, len(prompts))
    record.update(teacher_record(result, settings))
    files.save(record, path)
    _log_fit(result, settings, file_name)
    return schedule_fit.FitOutcome(fit=fit, file_name=file_name, record=record)


def _log_fit(result: SamplerFit, settings: schedule_fit.FitSettings, file_name: str) -> None:
    fit, sampler, check = result.fit, result.sampler, result.check
    plain = f"{fit.plain_error:.4g}" if fit.plain_error is not None else "n/a (not on the fine schedule)"
    log.info("Glance fit: %d model passes in %.1f s; %d slow + %d fast steps at %s, switch sigma %.4f; summed "
             "%s step error %.4g (plain %s: %s); saved %s", fit.model_passes, fit.seconds, settings.steps_slow,
             settings.steps_fast, [round(float(s), 4) for s in fit.sigmas], fit.switch_sigma, sampler,
             fit.fit_error, settings.scheduler, plain, file_name)
    if check is None:
        return
    log.info("Glance fit: %s on the fitted schedule lands %.4g from the teacher (plain %s: %.4g, mean squared "
             "latent distance, %d rollout(s)); halving the teacher's steps moves it by %.4g, so doubling the "
             "teacher's steps moves it by at most %.4g (%s)", sampler, check.fitted_error, settings.scheduler,
             check.plain_error, check.rollouts, check.halved_shift, check.teacher_shift,
             "converged: under a tenth of the fitted error" if check.converged else "NOT converged")
    if not check.converged:
        log.warning("Glance fit: the teacher (%d steps) is not converged for this fit: doubling its steps may move its "
                    "result by up to %.3g, more than a tenth of the fitted schedule's error %.3g. Raise fine_steps "
                    "(e.g. to %d) for a schedule fitted to the converged picture.", settings.fine_steps,
                    check.teacher_shift, check.fitted_error, 2 * settings.fine_steps)
