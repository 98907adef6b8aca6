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
    """Import a module of the loaded pack by dotted name, e.g. ``pack("schedules.presets")``."""
    return pack_module

@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (10x faster here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The demo kit's captions the kit tests use: one the base model trained on, and one it never saw.
TRAIN_CAPTION = "red apple, food and drink"
HELD_OUT_CAPTION = "banana, food and drink"


@pytest.fixture(scope="session")
def demo_kit(comfy, base_dir):
    """The demo kit (cli/model_kit.py) through the stock loaders, once per session: the MMDiT ``model``, the
    conditioning of each caption in ``conds`` (training, held out, and ``""`` as the negative), an empty ``latent``."""
    import torch

    from cli import emoji_data, model_kit

    data = emoji_data.load()
    assert not data.held_out[data.captions.index(TRAIN_CAPTION)] and data.held_out[data.captions.index(HELD_OUT_CAPTION)]
    model_kit.ensure_demo_models(base_dir / "models")
    n = comfy.NODE_CLASS_MAPPINGS
    loaders = model_kit.node_inputs()
    with torch.inference_mode():
        model = n["UNETLoader"]().load_unet(**loaders["UNETLoader"])[0]
        clip = n["CLIPLoader"]().load_clip(**loaders["CLIPLoader"])[0]
        encode = n["CLIPTextEncode"]()
        conds = {text: encode.encode(clip, text)[0] for text in (TRAIN_CAPTION, HELD_OUT_CAPTION, "")}
    size = model_kit.IMAGE_SIZE // 8
    return dict(nodes=comfy, n=n, model=model, conds=conds, negative=conds[""], train=TRAIN_CAPTION, held_out=HELD_OUT_CAPTION,
                latent={"samples": torch.zeros((1, 16, size, size))})
