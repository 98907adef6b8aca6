"""The schedule search: which points of a fine schedule a few-step schedule should step on (torch only, no host).

Given the local Euler error ``e(i, k) = mean ||x_i + (s_k - s_i) v_i - x_k||^2`` of a big step from fine point i
straight to fine point k (measured on teacher rollouts, ``sampling/schedule_fit.py``), dynamic programming finds the
path 0 -> N of exactly n steps with the least total error. The switch is the node where the slow part ends: the
path's node after ``steps_slow`` steps. Left free, it is wherever the best n-step path has that node (the DP over
two-phase paths then equals the plain n-step DP, since the error does not depend on the phase). Given a switch
node, the best ``steps_slow``-step path above it is joined to the best ``steps_fast``-step path below it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
class FitPath:
    nodes: list[int]  # indices into the fine schedule, 0 .. N
    error: float  # summed local error along the path
    switch_node: int  # nodes[steps_slow]


def fit_path(errors: torch.Tensor, steps_slow: int, steps_fast: int, switch_node: int | None = None) -> FitPath:
    """The least-error path of ``steps_slow`` + ``steps_fast`` steps; with ``switch_node``, through that node
    after exactly ``steps_slow`` steps."""
    n = len(errors) - 1
    if switch_node is None:
        cost, nodes = least_error_path(errors, steps_slow + steps_fast)
        return FitPath(nodes, cost, nodes[steps_slow])
    slow_cost, slow = least_error_path(errors, steps_slow, 0, switch_node)
    fast_cost, fast = least_error_path(errors, steps_fast, switch_node, n)
    return FitPath(slow + fast[1:], slow_cost + fast_cost, switch_node)


def path_error(errors: torch.Tensor, nodes: list[int]) -> float:
    return float(sum(errors[a, b] for a, b in zip(nodes[:-1], nodes[1:])))


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
