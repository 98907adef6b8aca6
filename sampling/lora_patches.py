"""Turning a LoRA file into ModelPatcher patches, refusing files made for another architecture."""
from __future__ import annotations

import math

import comfy.lora
import comfy.lora_convert
import comfy.utils
import torch

# Suffixes of the "down" (A) matrix in the LoRA key styles the host's loader reads: one per adapted module.
_DOWN_SUFFIXES = (".lora_down.weight", "_lora.down.weight", ".lora_A.weight", ".lora.down.weight", ".lora_A",
                  ".lora_linear_layer.down.weight", ".hada_w1_a", ".lokr_w1", ".lokr_w1_a", ".oft_blocks", ".diff")
MIN_MATCHED_FRACTION = 0.5


def count_lora_modules(lora_sd: dict) -> int:
    return sum(1 for k in lora_sd if k.endswith(_DOWN_SUFFIXES))


def lora_patches(model, lora_sd: dict, source: str) -> dict:
    """The host's patches for ``lora_sd`` on ``model``; a clear error when it does not fit the model."""
    model_type = type(model.model).__name__
    converted = comfy.lora_convert.convert_lora(lora_sd)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(converted, key_map, log_missing=False)
    modules = count_lora_modules(converted)
    if not patches or (modules and len(patches) < MIN_MATCHED_FRACTION * modules):
        raise ValueError(
            f"{source}: only {len(patches)} of {modules or len(converted)} LoRA modules match this {model_type} model, "
            f"so it was made for another architecture. Pick a LoRA trained for {model_type} (or check that the "
            "base model loader loaded the model you meant)."
        )
    problem = lora_shape_problem(model, patches)
    if problem:
        raise ValueError(f"{source} does not fit this {model_type} model: first misfit {problem}. It was made for "
                         f"another {model_type} variant (other widths); pick a LoRA trained for this model.")
    return patches


def lora_file_patches(model, path, source: str) -> dict:
    """The host's patches for the LoRA file at ``path``, checked against ``model`` (its architecture, its shapes) and
    for NaN/inf values (``source`` names it in errors)."""
    lora_sd = load_lora_file(str(path), source)
    return lora_patches(model, lora_sd, source)


def load_lora_file(path: str, label: str) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors; errors naming ``label`` (input and file) when it is not a readable safetensors
    file or holds NaN/inf values (an alpha included)."""

    try:
        sd = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:  # safetensors' SafetensorError, a truncated or foreign file, a pickle refused by safe_load
        kind = type(e).__name__
        raise ValueError(f"{label} is not a valid LoRA file ({kind}: {e}); replace it with a complete .safetensors "
                         "file (download or save it again).") from None
    check_finite_tensors(sd, label)
    return sd


def check_finite_tensors(sd: dict, label: str) -> None:
    for key, t in sd.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{label}: tensor '{key}' holds NaN or infinite values, so every image it touches would be "
                             "black; use an intact LoRA file (a training run that diverged saves no file here).")


def lora_shape_problem(model, patches: dict) -> str | None:
    """The first patch whose low-rank product does not fit the model weight it targets, described; else None."""
    state = {**dict(model.model.named_parameters()), **dict(model.model.named_buffers())}
    for key, patch in patches.items():
        weight_key, offset = (key, None) if isinstance(key, str) else (key[0], key[1])
        weight = state.get(weight_key)
        weights = getattr(patch, "weights", None)
        if weight is None or not isinstance(weights, tuple) or len(weights) < 2 or type(patch).__name__ != "LoRAAdapter":
            continue
        up, down = weights[0], weights[1]
        if not isinstance(up, torch.Tensor) or not isinstance(down, torch.Tensor) or up.ndim < 2 or down.ndim < 2:
            continue
        reshape = weights[5] if len(weights) > 5 else None
        target = list(reshape) if reshape is not None else list(weight.shape)
        if offset is not None and len(offset) >= 3:
            target[offset[0]] = offset[2]
        mid = weights[3] if len(weights) > 3 else None
        out_f, in_f = up.shape[0], math.prod(down.shape[1:])
        if isinstance(mid, torch.Tensor) and mid.ndim > 2:  # LoCon's Tucker core carries the kernel
            in_f = down.shape[1] * math.prod(mid.shape[2:])
        rank_up, rank_down = math.prod(up.shape[1:]), down.shape[0]
        if rank_up != rank_down and mid is None:
            return f"'{weight_key}': its up and down matrices have ranks {rank_up} and {rank_down}"
        if out_f != target[0] or in_f != math.prod(target[1:]):
            return (f"'{weight_key}': the LoRA makes a change of shape {out_f}x{in_f} for a weight of shape "
                    f"{'x'.join(str(d) for d in target)}")
    return None
