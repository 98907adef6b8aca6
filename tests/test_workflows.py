"""The shipped workflows on a live ComfyUI: UI graphs convert to their API twins, API twins validate, and run."""
import uuid

import glance_server as gs
import pytest

pytestmark = [pytest.mark.host, pytest.mark.server]

# Workflows whose every model file has a small stand-in of the same loader structure (UNETLoader, CLIPLoader,
# VAELoader): they run end to end on the demo kit. glance_flux_dev needs DualCLIPLoader(type flux) with T5-XXL,
# which has no small form: it is validated only. glance_qwen_image_edit runs its edit text encoder on the kit's CLIP
# (the image goes in as a reference latent, which the kit's SD3 model does not read): the graph runs, the edit does not.
RUNS = ["glance_qwen_image", "glance_qwen_image_edit", "glance_train_and_sample", "stock_two_sampler_baseline",
        "glance_fit_and_distill"]
# Fewer rollouts and optimiser steps on the kit (the graph and its links as shipped); fresh save names each run.
QUICK = {"GlanceFitSchedule": lambda: {"rollouts": 2, "fine_steps": 20},
         "GlanceDistillExperts": lambda: {"rollouts": 2, "steps": 4, "fine_steps": 20,
                                          "save_name_slow": f"glance_test/distilled_{uuid.uuid4().hex[:8]}_slow",
                                          "save_name_fast": f"glance_test/distilled_{uuid.uuid4().hex[:8]}_fast"}}


def test_every_workflow_has_twin_and_preview():
    assert set(gs.WORKFLOW_NAMES) == {"glance_qwen_image", "glance_qwen_image_edit", "glance_flux_dev",
                                      "glance_train_and_sample", "stock_two_sampler_baseline", "glance_fit_and_distill",
                                      "glance_wan22"}
    for name in gs.WORKFLOW_NAMES:
        assert (gs.WORKFLOWS / "api" / f"{name}.json").is_file(), f"{name}: no API twin"
        previews = [p for ext in ("png", "jpg") for p in [gs.WORKFLOWS / f"{name}.{ext}"] if p.is_file()]
        assert previews, f"{name}: no preview image beside it"


@pytest.mark.parametrize("name", gs.WORKFLOW_NAMES)
def test_ui_converts_to_its_api_twin(live, name):
    ui, api = gs.load(name)
    assert gs.twin_differences(gs.ui_to_api(ui, live.object_info()), api, live.object_info()) == []


def test_twin_check_accepts_only_defaults_of_inputs_a_newer_host_added(live):
    """CFGNorm gained an optional 'pre_cfg' (default false) in v0.33: a twin without it matches at the default,
    on a host that has the input. Any other extra or changed input is a difference."""
    ui, api = gs.load("glance_qwen_image")
    info = live.object_info()
    converted = gs.ui_to_api(ui, info)
    node = next(i for i, n in api.items() if n["class_type"] == "CFGNorm")
    host_has_it = "pre_cfg" in info["CFGNorm"]["input"].get("optional", {})
    assert ("pre_cfg" in converted[node]["inputs"]) == host_has_it
    for value in (False, True):
        converted[node]["inputs"]["pre_cfg"] = value
        accepted = host_has_it and value is False
        assert gs.twin_differences(converted, api, info) == (
            [] if accepted else [f"node {node} (CFGNorm): 'pre_cfg' = {value}, twin '<absent>'"])
    del converted[node]["inputs"]["pre_cfg"]
    converted[node]["inputs"]["made_up"] = 1.0
    assert gs.twin_differences(converted, api, info) == [f"node {node} (CFGNorm): 'made_up' = 1.0, twin '<absent>'"]


def test_converter_catches_a_moved_widget_value(live):
    ui, api = gs.load("glance_qwen_image")
    sampler = next(n for n in ui["nodes"] if n["type"] == "GlancePhaseKSampler")
    values = sampler["widgets_values"]
    values[4], values[6] = values[6], values[4]  # cfg_slow <-> sampler_name
    assert gs.twin_differences(gs.ui_to_api(ui, live.object_info()), api, live.object_info())
    del values[1]  # the seed's control value
    with pytest.raises(AssertionError, match="after .seed. is not a control value"):
        gs.ui_to_api(ui, live.object_info())


def test_converter_catches_a_renamed_node_type(live):
    ui, _ = gs.load("glance_qwen_image")
    next(n for n in ui["nodes"] if n["type"] == "GlanceSigmas")["type"] = "GlanceSigmasRenamed"
    with pytest.raises(AssertionError, match="type GlanceSigmasRenamed is missing on the server"):
        gs.ui_to_api(ui, live.object_info())


@pytest.fixture(scope="module")
def shipped_files(live):
    """Stand-ins under every shipped model name, and the Load Image default, so /prompt can validate as shipped."""
    files = {}
    for name in gs.WORKFLOW_NAMES:
        files.update(gs.file_inputs(gs.load(name)[1]))
    gs.write_placeholders(live.base_dir, files)
    gs.write_emoji_png(live.base_dir / "input" / "example.png")
    return files


@pytest.mark.parametrize("name", gs.WORKFLOW_NAMES)
def test_api_twin_validates_as_shipped(live, shipped_files, name):
    """Every input, link type and value against the live /object_info, then the server's own validation."""
    api = gs.load(name)[1]
    assert gs.check_against_object_info(api, live.object_info()) == []
    # POST /prompt validates the whole graph; the stand-in files then fail to load at the first loader.
    api = gs.apply_overrides(api, {f"{n['_meta']['title']}.save_name": f"glance_test/{uuid.uuid4().hex}"
                                   for n in api.values() if n["class_type"] == "GlanceTrainLoRA"})
    prompt_id = live.client.queue(api)
    with pytest.raises(gs.PromptError) as failure:
        live.client.wait(prompt_id, timeout=120)
    assert failure.value.error.get("node_type") in {"UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader"}, failure.value


@pytest.mark.parametrize("name", RUNS)
def test_runs_to_success_on_the_small_kit(live, kit_files, name):
    prompt = gs.kit_prompt(name, kit_files)
    prompt = gs.apply_overrides(prompt, {f"{n['_meta']['title']}.{k}": v for n in prompt.values()
                                         if n["class_type"] in QUICK for k, v in QUICK[n["class_type"]]().items()})
    assert gs.check_against_object_info(prompt, live.object_info()) == []
    entry = live.client.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    save = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
    pixels = gs.image_pixels(live.client, entry, save)
    assert pixels.shape == (gs.model_kit.IMAGE_SIZE, gs.model_kit.IMAGE_SIZE, 3)
    assert pixels.std() > 1.0, "the decoded image is flat"
    if name == "glance_train_and_sample":
        for node_id, node in prompt.items():
            if node["class_type"] == "GlanceTrainLoRA":
                saved = live.models / "loras" / (node["inputs"]["save_name"] + ".safetensors")
                assert saved.is_file(), f"{node['_meta']['title']} saved nothing"
                assert entry["outputs"][node_id]["images"], "no loss plot"
    if name == "glance_fit_and_distill":
        fit = next(i for i, n in prompt.items() if n["class_type"] == "GlanceFitSchedule")
        distill = next(i for i, n in prompt.items() if n["class_type"] == "GlanceDistillExperts")
        assert entry["outputs"][fit]["images"] and entry["outputs"][distill]["images"], "no schedule or loss plot"
        assert list((live.models / "glance_schedules").glob("SD3_*_64x64_cfg5_5+5.json")), "no schedule file saved"
        for key in ("save_name_slow", "save_name_fast"):
            saved = live.models / "loras" / (prompt[distill]["inputs"][key] + ".safetensors")
            assert saved.is_file(), f"the distilled expert {key} was not saved"
