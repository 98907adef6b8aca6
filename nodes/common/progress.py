"""The host's progress bar for the running node: made on the first update, when the run's total is known."""
from __future__ import annotations

import comfy.utils


class NodeProgress:
    """``progress(done, total)`` moves the bar of the node ``node_cls`` is executing (its hidden unique_id)."""

    def __init__(self, node_cls):
        self.node_id = node_cls.hidden.unique_id if node_cls.hidden else None
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
        self.bar.update_absolute(done, total)
