"""Live-server helpers for tests: one real ComfyUI process per test session, workflow conversion and checks.

The server is started through ``cli/server.py`` (headless, CPU, loopback, free port, this pack linked in)
with the demo model kit (``cli/model_kit.py``) in its models folder, and stopped at the end of the session.
Its fixtures ``live`` and ``kit_files`` are registered for every test module by conftest.py.
"""
from __future__ import annotations

import uuid
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli import model_kit  # noqa: E402
from cli.client import ComfyClient, PromptError, apply_overrides  # noqa: E402,F401
from cli.server import ComfyServer  # noqa: E402

WORKFLOW_NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
VIRTUAL_NODES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


class Live:
    """The session's server, its base directory and a client."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.models = base_dir / "models"
        self.kit = model_kit.ensure_demo_models(self.models)
        self.server = ComfyServer(base_dir).start()
        self.client = ComfyClient(self.server.url)

    def object_info(self) -> dict:
        return self.client.object_info()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> Live:
    """A running ComfyUI with the pack and the demo model kit (one per session, shared by all modules)."""
    server = Live(tmp_path_factory.mktemp("comfy_server"))
    try:
        yield server
        if not server.server.alive():
            pytest.fail(f"the ComfyUI server died; log tail:\n{server.server.log_tail()}")
    finally:
        server.stop()


def load(name: str) -> tuple[dict, dict]:
    """(UI graph, API twin) of ``workflows/<name>.json``."""
    return json.loads((WORKFLOWS / f"{name}.json").read_text()), json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


# --- UI format -> API format, independent of the frontend ----------------------------------------------

def _widget_inputs(definition: dict):
    for section in ("required", "optional"):
        for name in definition.get("input_order", {}).get(section, []):
            spec = definition["input"][section][name]
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if typ in WIDGET_TYPES and not opts.get("forceInput"):
                yield name, typ, opts


def _is_optional(definition: dict, name: str) -> bool:
    return name in definition.get("input", {}).get("optional", {})


def added_by_host(cls: str, name: str, value, object_info: dict) -> bool:
    """Whether ``name`` = ``value`` is an optional input this host has and a workflow made for an older host does
    not: accepted in a prompt only with the input's default value (what the frontend fills in)."""
    definition = object_info.get(cls, {})
    if not _is_optional(definition, name):
        return False
    spec = definition["input"]["optional"][name]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return "default" in opts and opts["default"] == value and isinstance(value, bool) == isinstance(opts["default"], bool)


def twin_differences(converted: dict, twin: dict, object_info: dict) -> list[str]:
    """Differences between a converted UI graph and its API twin, ids equal; inputs a newer host added with
    their default value are not differences."""
    problems = [f"node {i}: only in the converted graph" for i in converted if i not in twin]
    problems += [f"node {i}: only in the twin" for i in twin if i not in converted]
    for node_id in sorted(set(converted) & set(twin)):
        got, want = converted[node_id], twin[node_id]
        if got["class_type"] != want["class_type"] or got.get("_meta") != want.get("_meta"):
            problems.append(f"node {node_id}: {got['class_type']} {got.get('_meta')} != {want['class_type']} {want.get('_meta')}")
            continue
        for name in sorted(set(got["inputs"]) | set(want["inputs"])):
            if name not in want["inputs"] and added_by_host(got["class_type"], name, got["inputs"][name], object_info):
                continue
            a, b = got["inputs"].get(name, "<absent>"), want["inputs"].get(name, "<absent>")
            if a != b or isinstance(a, bool) != isinstance(b, bool):
                problems.append(f"node {node_id} ({got['class_type']}): '{name}' = {a!r}, twin {b!r}")
    return problems


def _extra_widget(name: str, typ: str, opts: dict) -> str | None:
    """The frontend adds a value after some widgets: the seed control, and Load Image's upload button."""
    if typ == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
        return "control"
    if typ == "COMBO" and opts.get("image_upload"):
        return "upload"
    return None


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """Convert a UI-format graph to API format the way the frontend does (widgets in input order, links win)."""
    links = {row[0]: row for row in ui["links"]}
    out = {}
    for node in ui["nodes"]:
        cls = node["type"]
        if cls in VIRTUAL_NODES:
            continue
        if cls not in object_info:
            raise AssertionError(f"node {node['id']}: type {cls} is missing on the server")
        if node.get("mode", 0) != 0:
            raise AssertionError(f"node {node['id']} ({cls}) is muted or bypassed: ship workflows with every node active")
        definition = object_info[cls]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, typ, opts in _widget_inputs(definition):
            if not values and _is_optional(definition, name) and "default" in opts:
                inputs[name] = opts["default"]  # an input a newer host added: the frontend shows its default
                continue
            if not values:
                raise AssertionError(f"node {node['id']} ({cls}): no widget value left for '{name}'")
            inputs[name] = values.pop(0)
            extra = _extra_widget(name, typ, opts)
            if extra:
                if not values:
                    raise AssertionError(f"node {node['id']} ({cls}): missing the {extra} value after '{name}'")
                value = values.pop(0)
                allowed = CONTROL_VALUES if extra == "control" else {"image"}
                if value not in allowed:
                    raise AssertionError(f"node {node['id']} ({cls}): '{value}' after '{name}' is not a {extra} value")
        if values:
            raise AssertionError(f"node {node['id']} ({cls}): {len(values)} widget value(s) too many: {values}")
        for slot, entry in enumerate(node.get("inputs", [])):
            if entry.get("link") is None:
                continue
            link_id, src, src_slot, dst, dst_slot, _type = links[entry["link"]]
            if dst != node["id"] or dst_slot != slot:
                raise AssertionError(f"link {link_id} does not end at node {node['id']} input {slot} ('{entry['name']}')")
            inputs[entry["name"]] = [str(src), src_slot]
        title = node.get("title") or definition.get("display_name") or cls
        out[str(node["id"])] = {"inputs": inputs, "class_type": cls, "_meta": {"title": title}}
    for node in ui["nodes"]:
        for slot, entry in enumerate(node.get("outputs", [])):
            for link_id in entry.get("links") or []:
                if links[link_id][1] != node["id"] or links[link_id][2] != slot:
                    raise AssertionError(f"link {link_id} is listed on node {node['id']} output {slot} but starts elsewhere")
    return out


# --- API format against /object_info --------------------------------------------------------------------

def check_against_object_info(api: dict, object_info: dict) -> list[str]:
    """Problems of an API workflow against the server's node definitions ([] when none)."""
    problems = []
    for node_id, node in api.items():
        cls = node["class_type"]
        where = f"node {node_id} ({cls})"
        if cls not in object_info:
            problems.append(f"{where}: type unknown to the server")
            continue
        definition = object_info[cls]
        specs = {**definition["input"].get("optional", {}), **definition["input"].get("required", {})}
        for name in definition["input"].get("required", {}):
            if name not in node["inputs"]:
                problems.append(f"{where}: required input '{name}' missing")
        for name, value in node["inputs"].items():
            if name not in specs:
                problems.append(f"{where}: input '{name}' does not exist")
                continue
            spec = specs[name]
            typ = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(value, list):
                src = api.get(value[0])
                if src is None:
                    problems.append(f"{where}: '{name}' links to missing node {value[0]}")
                    continue
                outputs = object_info.get(src["class_type"], {}).get("output", [])
                if value[1] >= len(outputs):
                    problems.append(f"{where}: '{name}' links to output {value[1]} of {src['class_type']}, which has {len(outputs)}")
                elif outputs[value[1]] != typ and "*" not in (typ, outputs[value[1]]):
                    problems.append(f"{where}: '{name}' wants {typ} but gets {outputs[value[1]]}")
                continue
            problems += [f"{where}: '{name}' {p}" for p in _value_problems(typ, opts, spec, value)]
    return problems


def _value_problems(typ: str, opts: dict, spec, value) -> list[str]:
    if typ == "COMBO":
        options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
        return [] if value in options else [f"= {value!r} is not one of the server's options"]
    if typ == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
        return [f"= {value!r} is not an INT"]
    if typ == "FLOAT" and (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)):
        return [f"= {value!r} is not a finite FLOAT"]
    if typ == "BOOLEAN" and not isinstance(value, bool):
        return [f"= {value!r} is not a BOOLEAN"]
    if typ == "STRING" and not isinstance(value, str):
        return [f"= {value!r} is not a STRING"]
    if typ in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
            return [f"= {value!r} is outside [{opts.get('min')}, {opts.get('max')}]"]
    return []


def file_inputs(api: dict) -> dict[str, str]:
    """{file name: models sub-folder} for the loader inputs of a workflow (placeholders for validation)."""
    folders = {"unet_name": "diffusion_models", "clip_name": "text_encoders", "clip_name1": "text_encoders",
               "clip_name2": "text_encoders", "vae_name": "vae", "lora_name": "loras", "slow_lora": "loras",
               "fast_lora": "loras"}
    out = {}
    for node in api.values():
        for name, value in node["inputs"].items():
            if name in folders and isinstance(value, str) and value != "None":
                out[value] = folders[name]
    return out


# --- files for the runs ---------------------------------------------------------------------------------

KIT_LORAS = ("glance_test/kit_slow.safetensors", "glance_test/kit_fast.safetensors")


def write_kit_loras(models: Path, rank: int = 4) -> tuple[str, str]:
    """Two random LoRAs (host key style) on the kit MMDiT's attention and MLP layers: distinct slow/fast experts."""
    import safetensors.torch
    import torch
    from safetensors import safe_open

    with safe_open(str(models / "diffusion_models" / model_kit.MMDIT_NAME), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    targets = sorted(k[:-len(".weight")] for k, s in shapes.items()
                     if len(s) == 2 and k.startswith("joint_blocks.") and (".attn." in k or ".mlp." in k))
    assert targets, "the kit MMDiT has no joint_blocks linear layers"
    for seed, name in enumerate(KIT_LORAS):
        path = models / "loras" / name
        if path.is_file():
            continue
        gen = torch.Generator().manual_seed(seed)
        sd = {}
        for module in targets:
            out_f, in_f = shapes[module + ".weight"]
            sd[f"diffusion_model.{module}.lora_down.weight"] = torch.randn((rank, in_f), generator=gen) * 0.1
            sd[f"diffusion_model.{module}.lora_up.weight"] = torch.randn((out_f, rank), generator=gen) * 0.1
            sd[f"diffusion_model.{module}.alpha"] = torch.tensor(float(rank))
        path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(sd, str(path))
    return KIT_LORAS


KIT_CAPTION = "red apple, food and drink"  # a training caption of the kit (cli/emoji_data.py)


def write_emoji_png(path: Path, caption: str = KIT_CAPTION) -> Path:
    """A real training image: the kit's emoji with this caption (as the demo makes it)."""
    from cli.demo import emoji_png

    return emoji_png(path, caption)


def write_placeholders(base_dir: Path, files: dict[str, str]) -> None:
    """Stand-ins under the shipped file names, so the server's validation sees them (they cannot load)."""
    import safetensors.torch
    import torch

    for name, folder in files.items():
        path = base_dir / "models" / folder / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            safetensors.torch.save_file({"placeholder": torch.zeros(1)}, str(path))


def image_pixels(client: ComfyClient, entry: dict, node_id: str):
    """The first image a node saved, as a uint8 array."""
    import io

    import numpy as np
    from PIL import Image

    image = entry["outputs"][node_id]["images"][0]
    data = client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output"))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- the shipped workflows on the demo kit ---------------------------------------------------------------

@pytest.fixture(scope="session")
def kit_files(live):
    """Random slow/fast LoRAs for the kit model and an uploaded training image."""
    slow, fast = write_kit_loras(live.models)
    image = live.client.upload_image(write_emoji_png(live.base_dir / "emoji.png"))
    return {"slow": slow, "fast": fast, "image": image}


def kit_prompt(name: str, kit_files: dict) -> dict:
    api = load(name)[1]
    overrides = model_kit.kit_overrides(api)
    for node in api.values():
        title, cls = node["_meta"]["title"], node["class_type"]
        if cls == "GlanceLoraLoader":
            overrides.update({f"{title}.slow_lora": kit_files["slow"], f"{title}.fast_lora": kit_files["fast"]})
        elif cls == "LoraLoaderModelOnly":
            overrides[f"{title}.lora_name"] = kit_files["slow" if "Slow" in title else "fast"]
        elif cls == "LoadImage":
            overrides[f"{title}.image"] = kit_files["image"]
        elif cls == "GlanceTrainLoRA":
            overrides[f"{title}.save_name"] = f"glance_test/{node['inputs']['phase']}_{uuid.uuid4().hex[:8]}"
            overrides[f"{title}.steps"] = 8
        elif cls == "CLIPTextEncode" and title in ("Prompt", "Caption"):
            overrides[f"{title}.text"] = KIT_CAPTION
    return apply_overrides(api, overrides)


def write_stand_ins(base_dir: Path, apis) -> dict[str, str]:
    """What a user who has the files installed has: a stand-in under every model file the API workflows ``apis``
    name (``write_placeholders``) and a real image under every Load Image file name (in input/). The server's
    validation and the frontend's missing-model and missing-media checks then find them. Returns
    {file name: models sub-folder, or "input"}."""
    files = {}
    for api in apis:
        files.update(file_inputs(api))
    write_placeholders(base_dir, files)
    for api in apis:
        for node in api.values():
            image = node["inputs"].get("image")
            if node["class_type"] == "LoadImage" and isinstance(image, str):
                if not (base_dir / "input" / image).exists():
                    write_emoji_png(base_dir / "input" / image)
                files[image] = "input"
    return files
