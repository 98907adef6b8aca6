"""Locating and starting the real ComfyUI host for tests and benchmarks.

The host is found via ``COMFYUI_PATH``, else ``~/comfy/ComfyUI``, else by walking up from this pack
(installed in ``ComfyUI/custom_nodes/``). Nothing here replaces any part of the host.
"""
from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
if str(PACK_DIR) not in sys.path:
    sys.path.append(str(PACK_DIR))
from cli.server import HOW_TO_PROVIDE, PACK_NAME, define_torchvision_op_schemas, find_comfyui, link_pack  # noqa: E402

PACK_MODULE = PACK_NAME


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
    link = link_pack(base_dir)
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
