"""Fitting a schedule for the sampler the user runs: an exact model of that sampler's steps, multistep history included.

The host's deterministic samplers ``euler``, ``dpmpp_2m`` and ``res_multistep`` (the last with eta 0, as the host's
``res_multistep`` runs) all take steps of one linear form (comfy/k_diffusion/sampling.py):

    x_next = cx * x + cd * D + co * D_old

where D is the guided model's denoised prediction at (x, s), D_old the one of the previous step (the history a
multistep sampler carries), and the coefficients depend on the previous, current and next sigma only:

- ``euler``: ``x + (s_next - s) (x - D) / s``, i.e. cx = s_next / s, cd = 1 - s_next / s, co = 0;
- ``dpmpp_2m``: with t = -log s, h = t_next - t, r = (t - t_prev) / h: cx = s_next / s, c = 1 - s_next / s,
  cd = c (1 + 1 / 2r), co = -c / 2r; its first step and any step to sigma 0 are Euler steps;
- ``res_multistep`` (eta 0): h as above, c2 = (t_prev - t) / h, phi1(z) = expm1(z) / z, phi2(z) = (phi1(z) - 1) / z:
  cx = exp(-h), cd = h (phi1(-h) - phi2(-h) / c2), co = h phi2(-h) / c2; first and last steps Euler.

Other samplers (ancestral and SDE ones draw noise; uni_pc's corrector and the higher-order ones are not modelled
here) are refused by name, with this list.

With a teacher trajectory (states X_i and denoised D_i at the points of a fine schedule), the error of one step of
the sampler from point i to point k, having come from point h, is
``e(h, i, k) = mean ||cx X_i + cd D_i + co D_h - X_k||^2``: it depends on the point before (the history), so the
least-error path is a dynamic programme over pairs (previous point, point). All of it comes from the mean Gram
matrix of the vectors X_0..X_N, D_0..D_{N-1} (the rollouts' inner products), so no step is sampled twice.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

SUPPORTED_SAMPLERS = ("euler", "dpmpp_2m", "res_multistep")


def check_sampler(name: str, input_name: str = "sampler_name") -> None:
    if name not in SUPPORTED_SAMPLERS:
        raise ValueError(f"{input_name}='{name}': the fit can model only the deterministic samplers "
                         f"{', '.join(SUPPORTED_SAMPLERS)} (it fits the sampler's own steps, history included); "
                         f"'{name}' is not one of them. Pick one of those for the fit and for sampling.")


def coefficients(sampler: str, s_prev: float | None, s: float, s_next: float) -> tuple[float, float, float]:
    """(cx, cd, co) of one step from sigma ``s`` to ``s_next``, the step before having started at ``s_prev``
    (None on the first step)."""
    euler = (s_next / s, 1.0 - s_next / s, 0.0)
    if sampler == "euler" or s_prev is None or s_next == 0:
        return euler
    t, t_next, t_prev = -math.log(s), -math.log(s_next), -math.log(s_prev)
    h = t_next - t
    if sampler == "dpmpp_2m":
        r = (t - t_prev) / h
        c = -math.expm1(-h)
        return math.exp(-h), c * (1 + 1 / (2 * r)), -c / (2 * r)
    if sampler == "res_multistep":
        c2 = (t_prev - t) / h
        phi1 = math.expm1(-h) / (-h)
        phi2 = (phi1 - 1.0) / (-h)
        return math.exp(-h), h * (phi1 - phi2 / c2), h * phi2 / c2
    check_sampler(sampler)
    raise AssertionError(sampler)


def simulate(sampler: str, denoise: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor,
             sigmas) -> torch.Tensor:
    """The sampler's steps over ``sigmas`` from ``x``, with ``denoise(x, sigma)`` the guided model's prediction."""
    s = [float(v) for v in sigmas]
    old = None
    for i in range(len(s) - 1):
        d = denoise(x, s[i])
        cx, cd, co = coefficients(sampler, s[i - 1] if old is not None else None, s[i], s[i + 1])
        x = cx * x + cd * d + (co * old if co != 0.0 else 0.0)
        old = d
    return x


# --- the error tensor from the teacher's Gram matrix ----------------------------------------------------------

def gram(x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Inner products (mean over elements) of the vectors X_0..X_N, D_0..D_{N-1} of one rollout: [2N+1, 2N+1]
    float64. ``x`` [N+1, ...], ``denoised`` [N, ...]."""
    v = torch.cat([x.reshape(len(x), -1), denoised.reshape(len(denoised), -1)]).double()
    return v @ v.T / v.shape[1]


def step_errors(g: torch.Tensor, sigmas: torch.Tensor, sampler: str) -> torch.Tensor:
    """e[h + 1, i, k] for every fine-schedule triple h < i < k (h = -1, stored at index 0: the first step, no
    history); +inf elsewhere. ``g`` the mean Gram matrix (``gram``), ``sigmas`` the fine schedule [N+1]."""
    s = [float(v) for v in sigmas]
    n = len(s) - 1
    xi = lambda i: i  # noqa: E731  (index of X_i in g)
    di = lambda i: n + 1 + i  # noqa: E731  (index of D_i)
    e = torch.full((n + 2, n + 1, n + 1), math.inf, dtype=torch.float64)
    ks = torch.arange(n + 1)
    for i in range(n):
        k = ks[i + 1:]
        for h in ([None] + list(range(i))) if i > 0 else [None]:
            if h is None and i > 0 and sampler != "euler":
                # a first step that starts at i > 0 happens only when the path starts there; paths start at 0
                continue
            c = torch.tensor([coefficients(sampler, s[h] if h is not None else None, s[i], s[int(kk)]) for kk in k],
                             dtype=torch.float64)
            cx, cd, co = c[:, 0], c[:, 1], c[:, 2]
            # ||cx X_i + cd D_i + co D_h - X_k||^2 expanded over the Gram matrix
            val = (cx ** 2 * g[xi(i), xi(i)] + cd ** 2 * g[di(i), di(i)] + g[k, k]
                   + 2 * cx * cd * g[xi(i), di(i)] - 2 * cx * g[xi(i), k] - 2 * cd * g[di(i), k])
            if h is not None:
                val = val + (co ** 2 * g[di(h), di(h)] + 2 * cx * co * g[xi(i), di(h)] + 2 * cd * co * g[di(i), di(h)]
                             - 2 * co * g[di(h), k])
            e[0 if h is None else h + 1, i, i + 1:] = val.clamp_min(0.0)
    return e


def least_error_path(e: torch.Tensor, steps: int, through: tuple[int, int] | None = None,
                     discount: float = 1.0) -> tuple[float, list[int]]:
    """The path 0 -> N of exactly ``steps`` steps with the least summed error ``e[h + 1, i, k]`` (the step i -> k
    having come from h). ``through=(j, m)``: the path is at point m after exactly j steps. ``discount``: step j
    (from 0) counts ``discount ** j`` times its error (GITS's coefficient: above 1 weighs the later steps more)."""
    n = e.shape[1] - 1
    if not 1 <= steps <= n:
        raise ValueError(f"a path over {n} fine steps has 1 to {n} steps, not {steps}")
    # best[h + 1, i]: least error of a path at i whose previous point is h (h = -1: at the start, no step yet)
    best = torch.full((n + 2, n + 1), math.inf, dtype=torch.float64)
    best[0, 0] = 0.0
    back = []
    for j in range(steps):
        total = best.unsqueeze(2) + (e if discount == 1.0 else e * discount ** j)  # [h + 1, i, k]
        value, arg = total.min(dim=0)  # over h: [i, k]
        new = torch.full_like(best, math.inf)
        new[1:, :] = value  # the new state (previous point i, point k): row i + 1
        if through is not None and j + 1 == through[0]:
            keep = torch.full_like(new, math.inf)
            keep[:, through[1]] = new[:, through[1]]
            new = keep
        back.append(arg)
        best = new
    col = best[:, n]
    cost = float(col.min())
    if not math.isfinite(cost):
        raise ValueError(f"no finite {steps}-step path to point {n}")
    prev = int(col.argmin()) - 1
    nodes = [n]
    cur = n
    for arg in reversed(back):
        nodes.append(prev)
        h = int(arg[prev, cur]) - 1
        cur, prev = prev, h
    nodes.reverse()
    assert nodes[0] == 0, nodes
    return cost, nodes


# --- the student-state path: the sampler's own states, not the teacher's -------------------------------------

def student_state_path(evaluate: Callable[[int, list, list], list], targets: list, sigmas, sampler: str, steps: int,
                       through: tuple[int, int] | None = None,
                       window: list[tuple[int, int]] | None = None) -> tuple[float, list[int], int]:
    """The path 0 -> N of ``steps`` steps of ``sampler`` whose OWN states stay closest to the teacher's (as OSS
    does): after j steps the best way to each point k is kept with the state the sampler would carry there (x and
    the previous denoised), and step j + 1 continues from those states; each candidate is judged by the mean
    squared distance of its state at k to the teacher's X_k, the last one at sigma 0 by the end result.

    ``targets``: per batch of rollouts, the teacher's states X [R_b, N+1, ...] (the sampler's start is X[:, 0]).
    ``evaluate(b, xs, ss)``: the guided model's denoised prediction for batch b at each state xs[m] [R_b, ...] and
    sigma ss[m]. ``window``: per step j (index j - 1), the points (lo, hi) the path may be at after j steps (e.g. a
    band around a cheaper path): fewer states to evaluate. Returns (end error, points, model evaluations of one
    image)."""
    s = [float(v) for v in sigmas]
    n = len(s) - 1
    if not 1 <= steps <= n:
        raise ValueError(f"a path over {n} fine steps has 1 to {n} steps, not {steps}")
    total = sum(t.shape[0] for t in targets)
    # state per point: (x per batch, previous denoised per batch or None, previous point or None, path)
    state = {0: ([t[:, 0].double() for t in targets], None, None, [0])}
    evaluations = 0
    err = math.inf
    for j in range(1, steps + 1):
        lo, hi = j, n - (steps - j)
        if window is not None:
            lo, hi = max(lo, window[j - 1][0]), min(hi, window[j - 1][1])
        if through is not None and j == through[0]:
            lo = hi = through[1]
        points = sorted(state)
        denoised = {i: [] for i in points}
        for b in range(len(targets)):
            out = evaluate(b, [state[i][0][b] for i in points], [s[i] for i in points])
            for i, d in zip(points, out):
                denoised[i].append(d.double())
        evaluations += len(points) * total
        new = {}
        for i in points:
            x, old, prev, path = state[i]
            for k in range(max(i + 1, lo), hi + 1):
                cx, cd, co = coefficients(sampler, s[prev] if prev is not None else None, s[i], s[k])
                xs, err = [], 0.0
                for b, t in enumerate(targets):
                    xk = cx * x[b] + cd * denoised[i][b]
                    if co != 0.0:
                        xk = xk + co * old[b]
                    xs.append(xk)
                    err += float(((xk - t[:, k].double()) ** 2).reshape(len(xk), -1).mean(1).sum())
                err /= total
                if k not in new or err < new[k][4]:
                    new[k] = (xs, denoised[i], i, path + [k], err)
        state = {k: v[:4] for k, v in new.items()}
        errs = {k: v[4] for k, v in new.items()}
    if n not in state:
        raise ValueError(f"no {steps}-step path to point {n}")
    return errs[n], state[n][3], evaluations
