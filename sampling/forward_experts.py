"""Two LoRA experts on one shared base, applied in the forward pass: base layer output + the active expert's term.

The base's weights are never written: each target Linear gets a forward hook (installed by a patcher injection
when the host loads the model, removed when it unloads it) that adds ``strength * alpha/rank * up(down(x))`` of
the expert that is active. Which one is active is set for the duration of each model call by an APPLY_MODEL
wrapper of the clone being sampled, so the slow clone runs the slow expert and the fast clone the fast one, in
any sampler. Both clones carry the same injection and one wrapper each under the same key, so the host sees
them as one model with the same weights: switching between them moves no weight.

Patches that are not a plain LoRA on a Linear layer's weight (LoHa, LoKr, DoRA, convolutions, ...) stay weight
patches on their clone, merged by the host as usual.
"""
from __future__ import annotations

from dataclasses import dataclass

import comfy.patcher_extension
import torch

KEY = "glance_forward_experts"


@dataclass
class LowRank:
    """``scale * up @ down`` on the output features ``rows`` (None: all) of one Linear layer."""

    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out, rank]
    scale: float
    rows: tuple[int, int] | None = None  # (start, length) for a slice of a fused weight (e.g. q of qkv)

    def nbytes(self) -> int:
        return self.down.numel() * self.down.element_size() + self.up.numel() * self.up.element_size()


def _plain_lora(patch) -> tuple[torch.Tensor, torch.Tensor, float | None] | None:
    """(up, down, alpha) of a plain LoRA patch as the host's loader makes it, else None."""
    weights = getattr(patch, "weights", None)
    if type(patch).__name__ != "LoRAAdapter" or not isinstance(weights, tuple) or len(weights) < 6:
        return None
    up, down, alpha, mid, dora_scale, reshape = weights[:6]
    if mid is not None or dora_scale is not None or reshape is not None or up.ndim != 2 or down.ndim != 2:
        return None
    return up, down, (float(alpha) if alpha is not None else None)


def split_patches(model, patches: dict, strength: float) -> tuple[dict[str, list[LowRank]], dict]:
    """The host's LoRA patches (``comfy.lora.load_lora``) -> ({module name: terms} for the forward pass, the rest)."""
    modules = dict(model.model.diffusion_model.named_modules())
    forward: dict[str, list[LowRank]] = {}
    rest = {}
    for key, patch in patches.items():
        weight_key, rows = (key, None) if isinstance(key, str) else (key[0], key[1])
        lora = _plain_lora(patch)
        name = weight_key[len("diffusion_model."):-len(".weight")] if (
            weight_key.startswith("diffusion_model.") and weight_key.endswith(".weight")) else None
        module = modules.get(name) if name else None
        if rows is not None and (len(rows) < 3 or rows[0] != 0):
            lora = None  # only slices of the output features are a term of the layer's output
        if lora is None or not isinstance(module, torch.nn.Linear):
            rest[key] = patch
            continue
        up, down, alpha = lora
        rank = down.shape[0]
        scale = strength * (alpha / rank if alpha is not None else 1.0)
        forward.setdefault(name, []).append(LowRank(down, up, scale, None if rows is None else (rows[1], rows[2])))
    return forward, rest


class ExpertSet:
    """The experts of one loader call and which one is active; shared by its two clones."""

    def __init__(self):
        self.experts: dict[str, dict[str, list[LowRank]]] = {}
        self.active: str | None = None
        self._handles: list = []
        self._cast: dict = {}  # (id(tensor), device) -> the tensor on that compute device

    def add(self, name: str, terms: dict[str, list[LowRank]]) -> None:
        self.experts[name] = terms

    def nbytes(self) -> int:
        return sum(t.nbytes() for terms in self.experts.values() for ts in terms.values() for t in ts)

    def _on(self, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``tensor`` on ``like``'s device and in its dtype. A copy on another device is kept for the model's stay
        on that device (one per expert tensor, as large as the expert); a dtype cast is made per call (rank-sized)."""
        if tensor.device != like.device:
            key = (id(tensor), like.device)
            cached = self._cast.get(key)
            if cached is None:
                cached = self._cast[key] = tensor.to(device=like.device)
            tensor = cached
        return tensor if tensor.dtype == like.dtype else tensor.to(like.dtype)

    def _hook(self, name: str):
        def hook(module, inputs, output):
            terms = self.experts.get(self.active, {}).get(name) if self.active else None
            if not terms:
                return output
            x = inputs[0]
            # Sampling adds the terms into the layer's fresh output in place; where autograd records the graph,
            # into a copy.
            out = output.clone() if (torch.is_grad_enabled() and output.requires_grad) or not output.is_contiguous() else output
            flat_x, flat_out = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
            if flat_x.dtype != flat_out.dtype:
                flat_x = flat_x.to(flat_out.dtype)
            for t in terms:
                h = torch.mm(flat_x, self._on(t.down, flat_out).t()).mul_(t.scale)  # [tokens, rank]
                target = flat_out if t.rows is None else flat_out.narrow(1, t.rows[0], t.rows[1])
                target.addmm_(h, self._on(t.up, flat_out).t())
            return out
        return hook

    def inject(self, patcher) -> None:
        self.eject(patcher)
        dm = patcher.model.diffusion_model
        names = sorted({n for terms in self.experts.values() for n in terms})
        self._handles = [dm.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def eject(self, patcher) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._cast.clear()

    def activator(self, name: str):
        def wrapper(executor, *args, **kwargs):
            before, self.active = self.active, name
            try:
                return executor(*args, **kwargs)
            finally:
                self.active = before
        return wrapper


def forward_expert_clones(model, experts: dict[str, tuple[dict, float]]):
    """One clone of ``model`` per expert {name: (host LoRA patches, strength)}, all sharing one ExpertSet."""
    shared = ExpertSet()
    clones = {}
    for name, (patches, strength) in experts.items():
        terms, rest = split_patches(model, patches, strength) if patches else ({}, {})
        shared.add(name, terms)
        clone = model.clone()
        clone.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(inject=shared.inject, eject=shared.eject)])
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, shared.activator(name))
        if rest:
            clone.add_patches(rest, strength)
        clones[name] = clone
    return clones, shared
