"""pytest fixtures: the real ComfyUI host, in-process (CPU), with this pack loaded through the host's loader."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS, ROOT = Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))  # the glance_* helper modules
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # `cli`; appended, so that the host's `nodes` module wins over the pack's folder
from cli.host import pack_module, start_in_process  # noqa: E402
from cli.server import HOW_TO_PROVIDE, find_comfyui  # noqa: E402

HOST = find_comfyui()
pytest_plugins = ["glance_server"]  # the live-server fixtures, registered once for the whole session

def pytest_report_header(config):
    return f"ComfyUI host: {HOST}" if HOST else HOW_TO_PROVIDE

def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    skip = pytest.mark.skip(reason=HOW_TO_PROVIDE)
    for item in items:
        if "host" in item.keywords:
            item.add_marker(skip)

@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    """The host's base directory for this test session (models/, input/, output/, custom_nodes/)."""
    return tmp_path_factory.mktemp("comfy_base")

@pytest.fixture(scope="session")
def comfy(base_dir):
    """ComfyUI's ``nodes`` module with the host's nodes and this pack registered."""
    return start_in_process(base_dir)

@pytest.fixture(scope="session")
def pack(comfy):
    """Import a module of the loaded pack by dotted name, e.g. ``pack("nodes.schedules")``."""
    return pack_module

@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (10x faster here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
