"""Checks of what users hand the pack, in one place for every node: names to save under, numbers, sigma schedules
and LoRA files. Each error starts with the input's name (or the file's) and says what to do instead; each check
runs where the input is first known, before any long work.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

MAX_STEPS = 10000  # steps of one sampling run: the phase sampler's cap, and a saved schedule's
NAME_MAX = 255  # bytes per file or folder name on the common filesystems, where pathconf cannot say
TEMP_EXTRA = len("..") + 8 + len(".tmp")  # the atomic writer's temporary name: ".<name>.XXXXXXXX.tmp"


def save_path(save_name, root: Path, suffix: str, input_name: str, where: str) -> tuple[str, Path]:
    """(relative name with ``suffix``, absolute path inside ``root``) for a name a node saves under.

    Refused, before anything runs: empty names, NUL characters, absolute paths, '..'/'.' parts, a name the host's
    lists would not show (only dots before the suffix), names too long for the filesystem (with the temporary
    name the atomic writer uses beside the file), names that leave ``root``, a folder part that is a file, and a
    name that is a folder. Whether an existing file may be replaced is the caller's choice."""
    raw = save_name if isinstance(save_name, str) else ""
    name = raw.strip().replace("\\", "/")
    example = "e.g. 'glance/my_slow_lora'" if suffix == ".safetensors" else "e.g. 'my_model_10_steps'"
    if not name or name.endswith("/"):
        raise ValueError(f"{input_name}: give a file name, {example}.")
    if "\x00" in name:
        raise ValueError(f"{input_name}: {raw!r} contains a NUL character; give a plain file name, {example}.")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(raw.strip()).is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{input_name}: '{raw}' is an absolute path; give a name relative to {where}.")
    parts = [p for p in name.split("/") if p]
    if any(p in ("..", ".") for p in parts):
        raise ValueError(f"{input_name}: '{raw}' contains '..' or '.'; the file must stay inside {where}.")
    if not name.lower().endswith(suffix):
        name += suffix
    stem = PurePosixPath(name).name[:-len(suffix)]
    if not stem.strip("."):
        raise ValueError(f"{input_name}: '{raw}' would save '{PurePosixPath(name).name}', which no file list shows; "
                         f"give a name with letters or digits, {example}.")
    root = Path(root).resolve()
    limit = _name_max(root)
    for i, part in enumerate(PurePosixPath(name).parts):
        extra = TEMP_EXTRA if i == len(PurePosixPath(name).parts) - 1 else 0
        size = len(os.fsencode(part)) + extra
        if size > limit:
            raise ValueError(f"{input_name}: '{part[:40]}...' is too long for a file name here ({size} of at most "
                             f"{limit} bytes, with the {extra} the saving adds); give a shorter name.")
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(f"{input_name}: '{raw}' resolves outside {where}.")
    folder = root
    for part in path.relative_to(root).parts[:-1]:
        folder = folder / part
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{input_name}: '{folder.relative_to(root).as_posix()}' is a file in {where}, so nothing "
                             f"can be saved inside it; give another name.")
    if path.is_dir():
        raise ValueError(f"{input_name}: '{name}' is a folder in {where}; give another name.")
    return name, path


def _name_max(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no answer
        return NAME_MAX


def finite(value, input_name: str, fix: str) -> float:
    """``value`` as a float; an error naming the input when it is NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{input_name}={value!r} is not a number; {fix}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{input_name}={value!r} is not a finite number; {fix}.")
    return number


def check_sigmas(sigmas, input_name: str = "sigmas") -> torch.Tensor:
    """A SIGMAS input as a 1-D float tensor; an error naming the input when it is not one or holds NaN/inf.
    Ascending schedules stay allowed (unsampling runs them)."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
        raise ValueError(f"{input_name}: expected a SIGMAS schedule (a 1-D list of sigmas, e.g. from Glance Sigmas).")
    values = sigmas.detach().float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{input_name}: value {i} of the schedule is {float(values[i])} (not finite); connect a "
                         "schedule of finite sigmas (check the node that made it).")
    return sigmas


def load_lora_file(path: str, label: str) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors; errors naming ``label`` (input and file) when it is not a readable safetensors
    file or holds NaN/inf values (an alpha included)."""
    import comfy.utils

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


def check_image_size(model, width: int, height: int, input_name: str) -> None:
    """An error naming ``input_name`` when an image of ``width`` x ``height`` px is larger than the model's learned
    position embedding covers (SD3-family MMDiT: ``pos_embed_max_size`` patches a side); models with RoPE take any
    size."""
    dm = model.model.diffusion_model
    limit = getattr(dm, "pos_embed_max_size", None)
    embedder = getattr(dm, "x_embedder", None)
    if not limit or getattr(dm, "pos_embed", None) is None or embedder is None:
        return
    patch = int(embedder.patch_size[0])
    down = int(getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8) or 8)
    most = int(limit) * patch * down
    for side, px in (("width", int(width)), ("height", int(height))):
        if (px // down + 1) // patch > limit:
            raise ValueError(f"{input_name}: an image {side} of {px} px is more than this {type(model.model).__name__} "
                             f"model's position embedding covers ({most} px a side); use {most} px or less.")
