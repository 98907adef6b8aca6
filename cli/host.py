"""The real ComfyUI host, imported into this process (CPU) with this pack loaded: for tests, benchmarks, the kit.

The host is found as ``cli/server.py`` finds it (``COMFYUI_PATH``, ``~/comfy/ComfyUI``, or the ComfyUI this
pack is installed in). Nothing here replaces any part of the host.
"""
from __future__ import annotations

import asyncio
import importlib
import sys
import tempfile
from pathlib import Path

from .server import HOW_TO_PROVIDE, define_torchvision_op_schemas, find_comfyui, link_pack

_started = None  # (base_dir, ComfyUI's nodes module)
_pack_package = None


def start_in_process(base_dir: Path | None = None, cpu: bool = True):
    """Import the host in this process (CPU, unless ``cpu`` is False: then the host picks its device as it does when
    started without --cpu), load its nodes and this pack; returns ComfyUI's ``nodes``.

    A process holds one host with one base directory: a later call returns it, and refuses another
    ``base_dir``. ``None``: the running host, else one in a new temporary folder.
    """
    global _started, _pack_package
    if _started is not None:
        if base_dir is not None and Path(base_dir) != _started[0]:
            raise RuntimeError(f"the host already runs in this process with base directory {_started[0]}, not {base_dir}")
        return _started[1]
    base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="glance-host-"))
    host = find_comfyui()
    if host is None:
        raise RuntimeError(HOW_TO_PROVIDE)
    define_torchvision_op_schemas()
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_api_nodes = True
    comfy.cli_args.args.base_directory = str(base_dir)
    import folder_paths  # noqa: F401  (reads base_directory once, at import)
    import utils.extra_config  # noqa: F401  (before `nodes`, else `utils` resolves to comfy/utils.py)
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    link = link_pack(base_dir)
    if not asyncio.run(nodes.load_custom_node(str(link))):
        raise RuntimeError("comfyui-glance failed to load into the host; see the log above")
    _pack_package = str(link).replace(".", "_x_")
    _started = (base_dir, nodes)
    return nodes


def pack_module(name: str = ""):
    """A module of the loaded pack, e.g. ``pack_module("schedules.presets")``."""
    if _pack_package is None:
        raise RuntimeError("start_in_process() first")
    return importlib.import_module(_pack_package + ("." + name if name else ""))
