"""The live server under load and abuse: 20 prompts back to back, bad inputs as node_errors, server stays up."""
import math

import glance_server as gs
import numpy as np
import pytest

pytestmark = [pytest.mark.host, pytest.mark.server]

N_PROMPTS = 20
FAST = {"Image size.width": 32, "Image size.height": 32, "Glance Phase KSampler.cfg_slow": 1.0,
        "Glance Phase KSampler.cfg_fast": 1.0}  # one model pass per step: the loop is about leaks, not quality


@pytest.fixture(scope="module")
def glance_prompt(live, kit_files):
    """workflows/api/glance_qwen_image.json on the demo kit: LoRA loader, Glance sigmas, phase sampler."""
    return gs.kit_prompt("glance_qwen_image", kit_files)


def test_twenty_prompts_back_to_back(live, glance_prompt):
    """4 settings in turn (seed and Slow-LoRA strength change every prompt, so the LoRA loader and the sampler
    run each time): all succeed, equal settings give identical images, and the server's memory stays flat."""
    save = next(i for i, n in glance_prompt.items() if n["class_type"] == "SaveImage")
    settings = [(101, 1.0), (102, 0.5), (101, 0.5), (102, 1.0)]
    images, rss, seconds = {}, [], []
    for i in range(N_PROMPTS):
        seed, strength = settings[i % len(settings)]
        prompt = gs.apply_overrides(glance_prompt, {"Glance Phase KSampler.seed": seed, "Glance LoRAs.strength_slow": strength,
                                                    **FAST})
        entry = live.client.run(prompt, timeout=120)
        assert entry["status"]["status_str"] == "success", entry["status"]
        images.setdefault((seed, strength), []).append(gs.image_pixels(live.client, entry, save))
        rss.append(live.server.rss_bytes())
        seconds.append(entry["seconds"])
    for key, group in images.items():
        for other in group[1:]:
            np.testing.assert_array_equal(other, group[0], err_msg=f"seed/strength {key} gave different images")
    first = {key: group[0] for key, group in images.items()}
    assert not np.array_equal(first[101, 1.0], first[102, 1.0]), "different seeds gave the same image"
    assert not np.array_equal(first[101, 1.0], first[101, 0.5]), "a different Slow-LoRA strength gave the same image"
    growth = rss[-1] / rss[0] - 1
    print(f"{N_PROMPTS} prompts: {sum(seconds):.1f} s; RSS {rss[0] >> 20} -> {rss[-1] >> 20} MiB ({growth:+.1%})")
    assert growth < 0.10, f"server RSS grew {growth:.1%} over {N_PROMPTS} prompts ({rss[0] >> 20} -> {rss[-1] >> 20} MiB)"


def _refused(live, prompt):
    with pytest.raises(gs.PromptError) as refused:
        live.client.queue(prompt)
    return refused.value


def test_bad_inputs_come_back_as_node_errors(live, glance_prompt):
    ids = {n["_meta"]["title"]: i for i, n in glance_prompt.items()}

    bad_lora = gs.apply_overrides(glance_prompt, {"Glance LoRAs.slow_lora": "no_such_lora.safetensors"})
    err = _refused(live, bad_lora)
    errors = err.node_errors[ids["Glance LoRAs"]]["errors"]
    assert {e["type"] for e in errors} == {"custom_validation_failed"}
    assert "slow_lora: 'no_such_lora.safetensors' is not in models/loras" in errors[0]["details"]

    wrong_link = gs.apply_overrides(glance_prompt, {})
    wrong_link[ids["Glance Phase KSampler"]]["inputs"]["latent_image"] = [ids["Load VAE"], 0]  # a VAE into a LATENT
    err = _refused(live, wrong_link)
    assert [e["type"] for e in err.node_errors[ids["Glance Phase KSampler"]]["errors"]] == ["return_type_mismatch"]

    nan_switch = gs.apply_overrides(glance_prompt, {})
    nan_switch[ids["Glance Phase KSampler"]]["inputs"]["switch_sigma"] = math.nan  # sent as JSON NaN
    err = _refused(live, nan_switch)
    errors = err.node_errors[ids["Glance Phase KSampler"]]["errors"]
    assert errors and "switch_sigma" in errors[0]["details"]

    assert live.server.alive()
    entry = live.client.run(gs.apply_overrides(glance_prompt, {"Glance Phase KSampler.seed": 7}), timeout=120)
    assert entry["status"]["status_str"] == "success"


def test_nan_sigmas_fail_the_prompt_naming_the_input(live, glance_prompt):
    """A NaN in the SIGMAS (here from the host's SetFirstSigma, NaN sent as JSON) would sample a black image that
    the server reports as a success: the phase sampler fails the prompt, naming its sigmas."""
    ids = {n["_meta"]["title"]: i for i, n in glance_prompt.items()}
    prompt = gs.apply_overrides(glance_prompt, {})
    prompt["nan_sigma"] = {"class_type": "SetFirstSigma", "inputs": {"sigmas": [ids["Glance Sigmas"], 0], "sigma": math.nan},
                           "_meta": {"title": "NaN first sigma"}}
    prompt[ids["Glance Phase KSampler"]]["inputs"]["sigmas"] = ["nan_sigma", 0]
    with pytest.raises(gs.PromptError) as failed:
        live.client.run(prompt, timeout=120)
    assert failed.value.error.get("node_type") == "GlancePhaseKSampler", failed.value.error
    assert failed.value.error.get("exception_message", "").startswith("sigmas: value 0 of the schedule is nan")


def test_lora_loader_names_both_missing_files(live, glance_prompt):
    ids = {n["_meta"]["title"]: i for i, n in glance_prompt.items()}
    both = gs.apply_overrides(glance_prompt, {"Glance LoRAs.slow_lora": "gone_slow.safetensors",
                                              "Glance LoRAs.fast_lora": "gone_fast.safetensors"})
    err = _refused(live, both)
    details = " ".join(e["details"] for e in err.node_errors[ids["Glance LoRAs"]]["errors"])
    assert "slow_lora: 'gone_slow.safetensors'" in details and "fast_lora: 'gone_fast.safetensors'" in details, details
