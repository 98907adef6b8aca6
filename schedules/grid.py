"""Points of a fine schedule: which of them a sigma is nearest to, and whether a schedule lies on them (torch only,
no host)."""
from __future__ import annotations

import torch


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
