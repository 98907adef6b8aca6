"""The schedule search (schedules/search.py) against brute force: no host needed (schedules/ imports torch only)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from schedules import search


# --- the path search against brute force ----------------------------------------------------------------------

def _errors(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    e = torch.full((n + 1, n + 1), math.inf, dtype=torch.float64)
    for i in range(n):
        for k in range(i + 1, n + 1):
            e[i, k] = float(torch.rand((), generator=gen)) * (k - i) ** 1.5  # longer steps cost more, unevenly
    return e


def _brute(e: torch.Tensor, steps: int, start: int, end: int):
    best = (math.inf, None)
    for inner in itertools.combinations(range(start + 1, end), steps - 1):
        nodes = [start, *inner, end]
        cost = sum(float(e[a, b]) for a, b in zip(nodes[:-1], nodes[1:]))
        best = min(best, (cost, nodes))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_least_error_path_is_the_brute_force_optimum(seed):
    sf = search
    n = 9
    e = _errors(n, seed)
    for steps in range(1, n + 1):
        cost, nodes = sf.least_error_path(e, steps)
        want_cost, want_nodes = _brute(e, steps, 0, n)
        assert cost == pytest.approx(want_cost, rel=1e-12) and nodes == want_nodes, steps
        assert cost == pytest.approx(sf.path_error(e, nodes), rel=1e-12)


def test_two_phase_path_with_a_fixed_switch_is_the_brute_force_optimum():
    sf = search
    n = 10
    e = _errors(n, 7)
    for slow, fast in [(1, 1), (2, 3), (3, 2), (4, 4)]:
        free = sf.fit_path(e, slow, fast)
        want_cost, want_nodes = _brute(e, slow + fast, 0, n)
        assert free.error == pytest.approx(want_cost, rel=1e-12) and free.nodes == want_nodes
        assert free.switch_node == free.nodes[slow]
        for m in range(slow, n - fast + 1):
            held = sf.fit_path(e, slow, fast, switch_node=m)
            want = min((sum(float(e[a, b]) for a, b in zip(p[:-1], p[1:])), p)
                       for above in itertools.combinations(range(1, m), slow - 1)
                       for below in itertools.combinations(range(m + 1, n), fast - 1)
                       for p in [[0, *above, m, *below, n]])
            assert held.error == pytest.approx(want[0], rel=1e-12) and held.nodes == want[1], (slow, fast, m)
            assert held.nodes[slow] == m
        assert free.error <= min(sf.fit_path(e, slow, fast, switch_node=m).error for m in range(slow, n - fast + 1)) + 1e-12


def test_local_error_is_zero_for_the_steps_the_rollout_took():
    sf = search
    gen = torch.Generator().manual_seed(0)
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.3, 0.1, 0.0])
    v = torch.randn((5, 4, 3, 3), generator=gen)
    x = [torch.randn((4, 3, 3), generator=gen)]
    for i in range(5):  # Euler along the recorded velocities
        x.append(x[-1] + (sigmas[i + 1] - sigmas[i]) * v[i])
    e = sf.local_errors(torch.stack(x), v, sigmas)
    assert torch.allclose(torch.diagonal(e, 1), torch.zeros(5, dtype=torch.float64), atol=1e-10)
    assert bool((e[0, 2:] > 1e-3).all()), "skipping a point on a curved path must cost something"
    assert bool(torch.isinf(e[torch.tril(torch.ones(6, 6, dtype=torch.bool))]).all())
    straight = torch.stack([x[0] + (s - 1.0) * v[0] for s in sigmas])  # a straight path: every step is exact
    assert float(sf.local_errors(straight, v[:1].expand(5, -1, -1, -1), sigmas)[torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)].max()) < 1e-10
