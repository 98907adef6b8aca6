"""The model's blocks during a training run: each called on copies of its tensor inputs, optionally under activation
checkpointing; the original blocks are put back afterwards."""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint


def _fresh(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


class _TrainableBlock(torch.nn.Module):
    """Calls a block on copies of its tensor inputs, optionally under non-reentrant activation checkpointing.

    Some blocks (FLUX's) add to their input tensors in place; autograd needs those inputs unchanged, so each
    block gets its own copies (one activation-sized copy per block).
    """

    def __init__(self, block: torch.nn.Module, checkpoint: bool):
        super().__init__()
        self.block = block
        self.checkpoint = checkpoint

    def _run(self, *args, **kwargs):
        return self.block(*[_fresh(a) for a in args], **{k: _fresh(v) for k, v in kwargs.items()})

    def forward(self, *args, **kwargs):
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._run, *args, use_reentrant=False, **kwargs)
        return self._run(*args, **kwargs)


def block_lists(dm: torch.nn.Module, names: tuple[str, ...]) -> list[tuple[str, torch.nn.ModuleList]]:
    names = names or tuple(n for n, c in dm.named_children() if isinstance(c, torch.nn.ModuleList))
    return [(n, getattr(dm, n)) for n in names if isinstance(getattr(dm, n, None), torch.nn.ModuleList)]


@contextlib.contextmanager
def trainable_blocks(dm: torch.nn.Module, list_names: tuple[str, ...], checkpoint: bool):
    """Wrap each block of the model's block lists for the duration; the original blocks are put back on exit."""
    wrapped = []
    try:
        for _, blocks in block_lists(dm, list_names):
            for i, block in enumerate(blocks):
                blocks[i] = _TrainableBlock(block, checkpoint)
                wrapped.append((blocks, i, block))
        yield len(wrapped)
    finally:
        for blocks, i, block in wrapped:
            blocks[i] = block
