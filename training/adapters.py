"""Trainable LoRA terms on a shared base model, for the duration of one training run, and a base that stays untouched.

``lora_terms``: each target Linear layer gets a forward hook that adds ``alpha/rank * up(down(x))`` to its output.
The LoRA matrices are fp32 tensors on the compute device, made there directly: whatever the base layer's storage
(fp32, bf16, fp16, fp8) and wherever its weight lives, its term never depends on it. No module is replaced and no
parameter is added to the model; on exit the hooks are removed.

``frozen_base``: the base's tensors take part in autograd without being trained or copied. Every one is frozen
(``requires_grad`` off) for the run. A tensor made under ``torch.inference_mode`` (the executor runs loaders inside
it) and moved to the device outside it by the host keeps no version counter, and autograd refuses to save such a
tensor for the backward pass ("Inference tensors do not track version counter"). For those, the module holds, for
the run only, a stand-in over the same storage that has a version counter (no data copied); on exit every module
gets back exactly the tensor object it had, however the run ended (an interrupt inside the backward pass included).
The base's Parameter objects, dtypes, devices and values are the same afterwards, and no ``requires_grad`` is left
behind.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch


@dataclass
class LoraPair:
    down: torch.Tensor  # [rank, in], fp32, requires grad
    up: torch.Tensor  # [out, rank], fp32, requires grad
    scale: float  # alpha / rank


def target_layers(dm: torch.nn.Module, suffixes: tuple[str, ...]) -> list[tuple[str, torch.nn.Linear]]:
    """The Linear layers whose name is one of ``suffixes`` or ends with ``.suffix``, sorted by name."""
    found = []
    for name, module in dm.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes):
            found.append((name, module))
    return sorted(found, key=lambda item: item[0])


def new_pair(layer: torch.nn.Linear, rank: int, alpha: float, device: torch.device, gen: torch.Generator) -> LoraPair:
    """down: Kaiming-uniform (as torch's Linear initialises its weight), up: zeros, so training starts at the base model.
    Drawn on the CPU from ``gen`` (reproducible on every device), then made fp32 on ``device``; only the layer's
    shape is read."""
    down = torch.empty((rank, layer.in_features), dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=gen)
    down = down.to(device).requires_grad_(True)
    up = torch.zeros((layer.out_features, rank), dtype=torch.float32, device=device, requires_grad=True)
    return LoraPair(down, up, alpha / rank)


def _hook(pair: LoraPair):
    def add_term(module, args, output):
        x = args[0]
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(pair.down.dtype)  # fp32 term whatever the layer computes in; autocast casts it itself
        delta = torch.nn.functional.linear(torch.nn.functional.linear(x, pair.down), pair.up)
        return output + (delta * pair.scale).to(output.dtype)
    return add_term


@contextlib.contextmanager
def lora_terms(dm: torch.nn.Module, targets: list[tuple[str, torch.nn.Linear]], rank: int, alpha: float, seed: int,
               device: torch.device):
    """Yields {layer name: LoraPair} while each target layer's output carries its term; the hooks go on exit."""
    gen = torch.Generator().manual_seed(seed)
    pairs = {name: new_pair(layer, rank, alpha, device, gen) for name, layer in targets}
    with _hooked(targets, pairs):
        yield pairs


@contextlib.contextmanager
def fixed_terms(targets: list[tuple[str, torch.nn.Linear]], adapters: dict, rank: int, alpha: float,
                device: torch.device):
    """Trained terms ({layer name: (down, up)}, as ``lora_terms`` left them) on the target layers for the duration,
    not trainable; the hooks go on exit."""
    pairs = {name: LoraPair(down.to(device, torch.float32), up.to(device, torch.float32), alpha / rank)
             for name, (down, up) in adapters.items()}
    with _hooked([(name, layer) for name, layer in targets if name in pairs], pairs):
        yield


@contextlib.contextmanager
def _hooked(targets: list[tuple[str, torch.nn.Linear]], pairs: dict[str, LoraPair]):
    handles = []
    try:
        for name, layer in targets:
            handles.append(layer.register_forward_hook(_hook(pairs[name])))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _has_version_counter(t: torch.Tensor) -> bool:
    try:
        t._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        return False
    return not t.is_inference()


def _versioned_view(t: torch.Tensor) -> torch.Tensor:
    """A frozen tensor over ``t``'s own storage (no copy), made outside inference mode: it has a version counter."""
    view = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return torch.nn.Parameter(view, requires_grad=False) if isinstance(t, torch.nn.Parameter) else view


@contextlib.contextmanager
def frozen_base(model: torch.nn.Module):
    """Every parameter and buffer of ``model`` frozen and usable by autograd for the duration; restored exactly.

    A tensor without a version counter is not changed: its module holds, for the run, another tensor object over the
    same storage (``_versioned_view``); on exit the module gets its own object back. Giving it back is a plain entry
    in the module's table, so it never depends on what still refers to the stand-in (e.g. an autograd graph left
    half run by an interrupt in the backward pass: it goes when its last reference goes, sharing the weights'
    storage meanwhile)."""
    replaced: list[tuple[dict, str, torch.Tensor]] = []  # (a module's _parameters or _buffers, entry, its own tensor)
    stand_ins: dict[int, torch.Tensor] = {}  # id of the model's tensor -> its stand-in (one per tensor, also if shared)
    thawed: list[torch.Tensor] = []
    try:
        with torch.inference_mode(False):
            for module in model.modules():
                for table in (module._parameters, module._buffers):
                    for key, t in list(table.items()):
                        if t is None:
                            continue
                        plain = type(t) in (torch.Tensor, torch.nn.Parameter)
                        if plain and not _has_version_counter(t):
                            spare = stand_ins.get(id(t))
                            if spare is None:
                                spare = stand_ins[id(t)] = _versioned_view(t)
                                spare.__dict__.update(t.__dict__)  # attributes the host set on its tensor
                            replaced.append((table, key, t))
                            table[key] = spare
                        elif t.requires_grad and id(t) not in stand_ins:
                            t.requires_grad_(False)
                            thawed.append(t)
                            stand_ins[id(t)] = t
        yield
    finally:
        for table, key, t in reversed(replaced):
            table[key] = t
        for t in thawed:
            with torch.inference_mode(t.is_inference()):  # an inference tensor's flag can only be set inside it
                t.requires_grad_(True)
