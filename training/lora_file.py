"""The saved LoRA: ComfyUI's own key format, metadata, and an atomic write that never escapes models/loras.

Keys: ``diffusion_model.<native module>.lora_down.weight`` [rank, in], ``.lora_up.weight`` [out, rank] and
``.alpha`` (scalar); the weight delta is ``up @ down * alpha / rank``. The stock LoraLoader /
LoraLoaderModelOnly and GlanceLoraLoader read this for every architecture.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import safetensors.torch
import torch

from ..schedules.atomic_file import write_atomic
from ..schedules.save_path import resolve_save_name

PREFIX = "diffusion_model."
SUFFIX = ".safetensors"


def pack_version() -> str:
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1) if match else "unknown"


def resolve_save_path(save_name: str, loras_dir: Path) -> tuple[str, Path]:
    """(relative name with .safetensors, absolute path inside ``loras_dir``, the host's models/loras); refuses escapes
    (``schedules/save_path.py``) and existing files."""
    name, path = resolve_save_name(save_name, loras_dir, SUFFIX, "models/loras", "glance/my_slow_lora")
    if path.exists():
        raise FileExistsError(
            f"save_name: '{name}' already exists in models/loras; pick another name or delete the old file first."
        )
    return name, path


def comfy_lora_state_dict(adapters: dict, alpha: float, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """{module name: (down [r,in], up [out,r])} -> the host's key format, on CPU in ``dtype``."""
    sd = {}
    for name, (down, up) in adapters.items():
        key = PREFIX + name
        sd[key + ".lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        sd[key + ".lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        sd[key + ".alpha"] = torch.tensor(float(alpha))
    return sd


def build_metadata(**fields) -> dict[str, str]:
    """safetensors metadata (strings only) under the ``glance.`` namespace, plus kohya-style rank/alpha."""
    meta = {"glance.pack_version": pack_version(), "glance.key_format": "diffusion_model.<module>.lora_up/lora_down/alpha"}
    for key, value in fields.items():
        meta[f"glance.{key}"] = value if isinstance(value, str) else json.dumps(value)
    if "rank" in fields:
        meta["ss_network_dim"] = str(fields["rank"])
    if "alpha" in fields:
        meta["ss_network_alpha"] = str(fields["alpha"])
    return meta


def save_atomic(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Written whole or not at all, through the pack's one atomic writer; never overwrites."""
    try:
        write_atomic(path, lambda tmp: safetensors.torch.save_file(sd, str(tmp), metadata=metadata), overwrite=False)
    except FileExistsError:
        raise FileExistsError(f"save_name: '{path.name}' appeared in models/loras while training; nothing overwritten.") from None
