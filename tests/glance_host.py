"""Locating and starting the real ComfyUI host for tests and benchmarks.

The host is found via ``COMFYUI_PATH``, else ``~/comfy/ComfyUI``, else by walking up from this pack
(installed in ``ComfyUI/custom_nodes/``). Nothing here replaces any part of the host.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
PACK_MODULE = "comfyui-glance"
HOW_TO_PROVIDE = (
    "ComfyUI host not found: set COMFYUI_PATH to a ComfyUI checkout, put one at ~/comfy/ComfyUI, "
    "or install this pack in ComfyUI/custom_nodes/"
)


def _is_host(path: Path) -> bool:
    return (path / "comfy" / "model_management.py").is_file() and (path / "nodes.py").is_file()


def find_comfyui() -> Path | None:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser().resolve() if _is_host(Path(env).expanduser()) else None
    default = Path.home() / "comfy" / "ComfyUI"
    if _is_host(default):
        return default.resolve()
    for parent in PACK_DIR.parents:
        if _is_host(parent):
            return parent
    return None


def torchvision_needs_op_schemas() -> bool:
    """True when the installed torchvision is a CUDA build and torch is CPU-only.

    Such a torchvision cannot register its C ops, and ``import torchvision`` fails unless the two op
    schemas it looks up at import time exist. Only test machines without a matching torchvision hit this.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or "torchvision" in sys.modules:
        return False
    version_file = Path(spec.origin).parent / "version.py"
    if not version_file.is_file():
        return False
    match = re.search(r"^__version__\s*=\s*['\"][^'\"]*\+cu\d+", version_file.read_text(), re.M)
    import torch

    return bool(match) and torch.version.cuda is None


_schema_lib = None


def define_torchvision_op_schemas() -> None:
    global _schema_lib
    if _schema_lib is not None or not torchvision_needs_op_schemas():
        return
    import torch

    _schema_lib = torch.library.Library("torchvision", "FRAGMENT")
    _schema_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _schema_lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def pack_link(base_dir: Path) -> Path:
    """A ``custom_nodes/comfyui-glance`` symlink to this checkout, so the pack loads under its real name."""
    custom = base_dir / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    link = custom / PACK_MODULE
    if not link.exists():
        link.symlink_to(PACK_DIR, target_is_directory=True)
    return link


_started = None


def start_in_process(base_dir: Path):
    """Import the host in this process (CPU), load its nodes and this pack; returns ComfyUI's ``nodes``."""
    global _started
    if _started is not None:
        return _started
    host = find_comfyui()
    if host is None:
        raise RuntimeError(HOW_TO_PROVIDE)
    define_torchvision_op_schemas()
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_api_nodes = True
    comfy.cli_args.args.base_directory = str(base_dir)
    import folder_paths  # noqa: F401  (reads base_directory once, at import)
    import utils.extra_config  # noqa: F401  (before `nodes`, else `utils` resolves to comfy/utils.py)
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    link = pack_link(base_dir)
    ok = asyncio.run(nodes.load_custom_node(str(link)))
    if not ok:
        raise RuntimeError("comfyui-glance failed to load into the host; see the log above")
    global _pack_package
    _pack_package = str(link).replace(".", "_x_")
    _started = nodes
    return nodes


_pack_package = None


def pack_module(name: str = ""):
    """A module of the loaded pack, e.g. ``pack_module("nodes.schedules")``."""
    if _pack_package is None:
        raise RuntimeError("start_in_process() first")
    full = _pack_package + ("." + name if name else "")
    return importlib.import_module(full)
