"""Turning a LoRA file into ModelPatcher patches, refusing files made for another architecture."""
from __future__ import annotations

import comfy.lora
import comfy.lora_convert
import comfy.utils

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
    return patches


def lora_file_patches(model, path, source: str) -> dict:
    """The host's patches for the LoRA file at ``path``, checked against ``model`` (``source`` names it in errors)."""
    lora_sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    return lora_patches(model, lora_sd, source)
