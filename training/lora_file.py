"""The saved LoRA: ComfyUI's own key format, metadata, and an atomic write that never escapes models/loras.

Keys: ``diffusion_model.<native module>.lora_down.weight`` [rank, in], ``.lora_up.weight`` [out, rank] and
``.alpha`` (scalar); the weight delta is ``up @ down * alpha / rank``. The stock LoraLoader /
LoraLoaderModelOnly and GlanceLoraLoader read this for every architecture.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ..schedules.atomic_file import write_atomic, write_atomic_group
from ..schedules.save_path import resolve_save_name

PREFIX = "diffusion_model."
SUFFIX = ".safetensors"


def pack_version() -> str:
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1) if match else "unknown"


def resolve_save_path(save_name: str, loras_dir: Path, input_name: str = "save_name") -> tuple[str, Path]:
    """(relative name with .safetensors, absolute path inside ``loras_dir``, the host's models/loras); refuses escapes,
    names that cannot be saved (``schedules/save_path.py``) and existing files."""
    name, path = resolve_save_name(save_name, loras_dir, SUFFIX, input_name, "models/loras")
    if path.exists():
        raise FileExistsError(
            f"{input_name}: '{name}' already exists in models/loras; pick another name or delete the old file first."
        )
    return name, path


def resolve_pair(save_names: dict[str, str], loras_dir: Path) -> tuple[list[tuple[str, Path]], list[Path]]:
    """The paths of files saved as one unit ({input name: save name}), and the left-over files among them that the
    unit may replace: a file of an earlier run of the same unit whose partner is missing (a unit is saved whole, so
    only a run cut between the two names leaves one). Anything else that exists is refused."""
    resolved = [(input_name, *resolve_save_name(save_name, loras_dir, SUFFIX, input_name, "models/loras"))
                for input_name, save_name in save_names.items()]
    names = [name for _, name, _ in resolved]
    left_over = []
    for input_name, name, path in resolved:
        if not path.exists():
            continue
        if pair_of(path) == names and not all(p.exists() for _, _, p in resolved):
            left_over.append(path)
            continue
        raise FileExistsError(
            f"{input_name}: '{name}' already exists in models/loras; pick another name or delete the old file first.")
    return [(name, path) for _, name, path in resolved], left_over


def pair_of(path: Path) -> list[str] | None:
    """The unit a saved file belongs to (its ``glance.pair`` metadata), or None."""
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("glance.pair", "null"))
    except Exception:  # not a readable safetensors file: not ours to replace
        return None


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


def save_pair_atomic(files: list[tuple[str, dict[str, torch.Tensor], Path, dict[str, str]]],
                     left_over: list[Path] = ()) -> None:
    """Files [(input name, state dict, path, metadata)] saved as one unit: all of them or none
    (schedules/atomic_file.py write_atomic_group); ``left_over`` (resolve_pair) goes just before the unit takes its
    names."""
    writes = [(path, lambda tmp, sd=sd, meta=meta: safetensors.torch.save_file(sd, str(tmp), metadata=meta))
              for _, sd, path, meta in files]
    try:
        write_atomic_group(writes, before_placing=lambda: [p.unlink(missing_ok=True) for p in left_over])
    except FileExistsError:
        input_name, path = next(((i, p) for i, _, p, _ in files if p.exists()), (files[0][0], files[0][2]))
        raise FileExistsError(f"{input_name}: '{path.name}' appeared in models/loras while training; none of the "
                              f"{len(files)} files was saved. Pick other names and run again.") from None
