"""Turning a LoRA file into ModelPatcher patches, refusing files made for another architecture."""
from __future__ import annotations

import comfy.lora
import comfy.lora_convert
import folder_paths

from ..validation import load_lora_file, lora_shape_problem

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


def resolve_lora_path(input_name: str, file_name: str) -> str:
    path = folder_paths.get_full_path("loras", file_name)
    if path is None:
        raise FileNotFoundError(
            f"{input_name}: '{file_name}' is not in models/loras. Put the file there (subfolders are fine) and "
            "refresh the node, or pick one from the list."
        )
    return path


def lora_file_patches(model, input_name: str, file_name: str) -> dict:
    """The host's patches for a LoRA file in models/loras, checked against ``model`` (its architecture, its shapes)
    and for NaN/inf values."""
    path = resolve_lora_path(input_name, file_name)
    lora_sd = load_lora_file(path, f"{input_name} '{file_name}'")
    return lora_patches(model, lora_sd, f"{input_name} '{file_name}'")
