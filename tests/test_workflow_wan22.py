"""The shipped glance_wan22 workflow runs on a live ComfyUI with a small Wan 2.2 A14B pair in the stock loaders.

The two experts are small models built from the host's own Wan detector config (``benchmarks/families.py``),
saved under the shipped file names in ``models/diffusion_models`` of a server of its own (the session's server
keeps stand-ins under those names that must fail to load: the validation of every workflow as shipped). The stock
UNETLoader reads them back from their keys: Wan 2.2 A14B's experts have Wan 2.1's architecture, so the host builds
them as WAN21 (config WAN21_T2V; its WAN22 class is the 5B model). The VAE is a Wan 2.1 VAE of seeded random
weights under the shipped name, as small as the host's VAELoader reads (0.33 takes the width from the file; 0.3.64
builds every Wan 2.1 VAE at the real width). The text encoder is the one stand-in under another name: the demo
kit's CLIP-L with type sd3, whose [1, 77, 4096] context has umT5-XXL's width (Wan's text_dim); umT5-XXL has no
small form that the host reads.
"""
import io
import json

import glance_server as gs
import pytest

from benchmarks import families as F

pytestmark = [pytest.mark.host, pytest.mark.server]

NAME = "glance_wan22"
SIDE, FRAMES = 64, 5  # 64x64 px, 5 frames: latents [1, 16, 2, 8, 8]


def smallest_wan21_vae(seed: int = 0) -> dict:
    """The smallest Wan 2.1 VAE the host's VAELoader reads: width 8 where it reads the width from the file, else
    the real width 96 (127M parameters, kept in fp16)."""
    import comfy.sd

    sd = F.wan21_vae_state_dict(8, seed)
    try:
        comfy.sd.VAE(sd=sd)
        return sd
    except RuntimeError:  # the host builds a Wan 2.1 VAE at width 96 whatever the file holds
        return {k: v.half() for k, v in F.wan21_vae_state_dict(96, seed).items()}


@pytest.fixture(scope="module")
def wan22(comfy, tmp_path_factory):
    """A live server of its own (the session's server keeps stand-ins that cannot load under these names) with the
    high- and low-noise experts (other seeds: other weights) and the VAE under the shipped file names."""
    import comfy.sd

    from cli.model_kit import save_safetensors

    base = tmp_path_factory.mktemp("wan22_server")
    names = {}
    for node in gs.load(NAME)[1].values():
        if node["class_type"] == "UNETLoader":
            names[node["_meta"]["title"]] = node["inputs"]["unet_name"]
        elif node["class_type"] == "VAELoader":
            vae_name = node["inputs"]["vae_name"]
    high, low = names["Load high-noise expert"], names["Load low-noise expert"]
    for seed, name in enumerate((high, low)):
        path = base / "models" / "diffusion_models" / name
        save_safetensors(F.file_state_dict(F.build("Wan 2.2 A14B", seed=seed, widths=F.WAN_A14B_FILE)), path)
        model = comfy.sd.load_diffusion_model(str(path)).model  # what the stock UNETLoader makes of it
        assert (type(model).__name__, type(model.model_config).__name__) == ("WAN21", "WAN21_T2V")
    save_safetensors(smallest_wan21_vae(), base / "models" / "vae" / vae_name)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # tiny models on a shared machine: one thread (as the one_thread fixture)
        server = gs.Live(base)  # and the demo kit, for its text encoder
    try:
        yield server, high, low
        assert server.server.alive(), f"the ComfyUI server died; log tail:\n{server.server.log_tail()}"
    finally:
        server.stop()


def prompt_for(save_name: str, high: str, low: str) -> dict:
    """The API twin as shipped, with the kit's text encoder, a small video, few rollouts and the experts' files."""
    from cli import model_kit

    clip = model_kit.node_inputs()["CLIPLoader"]
    return gs.apply_overrides(gs.load(NAME)[1], {
        "Load Text Encoder.clip_name": clip["clip_name"], "Load Text Encoder.type": clip["type"],
        "Video size.width": SIDE, "Video size.height": SIDE, "Video size.length": FRAMES,
        "Fit size.width": SIDE, "Fit size.height": SIDE, "Fit size.length": FRAMES,
        "Glance Fit Schedule (pair).rollouts": 1, "Glance Fit Schedule (pair).fine_steps": 20,
        "Glance Fit Schedule (pair).save_name": save_name,
        "Load high-noise expert.unet_name": high, "Load low-noise expert.unet_name": low})


def source(api: dict, node_id: str, name: str) -> str:
    """The title of the loader behind input ``name`` of node ``node_id`` (through any model patches)."""
    node = api[api[node_id]["inputs"][name][0]]
    while node["class_type"] != "UNETLoader":
        node = api[node["inputs"]["model"][0]]
    return node["_meta"]["title"]


def test_the_experts_are_wired_as_a_pair():
    """The high-noise expert is the fit's model and the sampler's slow phase, the low-noise expert the fit's
    model_low_noise and the fast phase; the switch is held at Wan 2.2's text-to-video boundary."""
    api = gs.load(NAME)[1]
    fit = next(i for i, n in api.items() if n["class_type"] == "GlanceFitSchedule")
    sampler = next(i for i, n in api.items() if n["class_type"] == "GlancePhaseKSampler")
    high, low = "Load high-noise expert", "Load low-noise expert"
    assert [source(api, fit, "model"), source(api, fit, "model_low_noise")] == [high, low]
    assert [source(api, sampler, "model_slow"), source(api, sampler, "model_fast")] == [high, low]
    assert api[fit]["inputs"]["handover_sigma"] == 0.875 and api[fit]["inputs"]["switch_sigma"] == 0.0
    assert api[sampler]["inputs"]["sigmas"] == [fit, 0] and api[sampler]["inputs"]["switch_sigma"] == [fit, 1]


def first_frame_and_count(client, entry: dict, node_id: str):
    from PIL import Image

    image = entry["outputs"][node_id]["images"][0]
    frames = Image.open(io.BytesIO(client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output"))))
    return gs.image_pixels(client, entry, node_id), frames.n_frames


def test_glance_wan22_runs_both_experts_on_the_stock_loaders(wan22):
    live, high, low = wan22
    save_name = "glance_test/wan22"
    prompt = prompt_for(save_name, high, low)
    assert gs.check_against_object_info(prompt, live.object_info()) == []
    entry = live.client.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    save = next(i for i, n in prompt.items() if n["class_type"] == "SaveAnimatedWEBP")
    fit = next(i for i, n in prompt.items() if n["class_type"] == "GlanceFitSchedule")
    pixels, frames = first_frame_and_count(live.client, entry, save)
    assert pixels.shape == (SIDE, SIDE, 3) and frames == FRAMES
    assert pixels.std() > 1.0, "the decoded video is flat"
    assert entry["outputs"][fit]["images"], "no schedule plot"

    # The fit held the switch at the handover (the first fast step starts at the fine point nearest 0.875; fine
    # points are under 0.02 apart there): 5 steps above it, 5 below; the sampler switched there.
    record = json.loads((live.models / "glance_schedules" / f"{save_name}.json").read_text())
    sigmas, switch = record["sigmas"], record["switch_sigma"]
    assert record["requested_switch_sigma"] == 0.875 and len(sigmas) == 11
    assert all(s > switch for s in sigmas[:5]) and all(s < switch for s in sigmas[5:])
    assert sigmas[5] == pytest.approx(0.875, abs=0.01)
    assert "switched to fast model at step 6 of 10" in live.server.log_tail(20000)

    # Another prompt to sample: the fit (its own Fit prompt) is not run again.
    again = live.client.run(gs.apply_overrides(prompt, {"Prompt.text": "a paper boat on a pond"}), timeout=300)
    cached = [m[1]["nodes"] for m in again["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and fit in cached[0], again["status"]["messages"]

    # Both files shaped the video (through the fit and the sampler: the sampler's wiring is checked above): either
    # file in both loaders gives another one.
    for files in ((high, high), (low, low)):
        other = live.client.run(prompt_for(save_name + "_swap", *files), timeout=300)
        assert other["status"]["status_str"] == "success"
        changed = first_frame_and_count(live.client, other, save)[0].astype(float) - pixels
        assert abs(changed).mean() > 1.0, f"the same video with {files} in the loaders"
