"""pytest fixtures: the real ComfyUI host, in-process (CPU), with this pack loaded through the host's loader."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glance_host  # noqa: E402

HOST = glance_host.find_comfyui()

def pytest_report_header(config):
    return f"ComfyUI host: {HOST}" if HOST else glance_host.HOW_TO_PROVIDE

def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    skip = pytest.mark.skip(reason=glance_host.HOW_TO_PROVIDE)
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
    return glance_host.start_in_process(base_dir)

@pytest.fixture(scope="session")
def pack(comfy):
    """Import a module of the loaded pack by dotted name, e.g. ``pack("nodes.schedules")``."""
    return glance_host.pack_module
