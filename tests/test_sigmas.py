"""GlanceSigmas: published presets, split schedules from the model's own scheduler, and the plot."""
from benchmarks import models as gm
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def node(comfy):
    return comfy.NODE_CLASS_MAPPINGS["GlanceSigmas"]


@pytest.fixture(scope="module")
def flux(comfy):
    return gm.make_flux()


@pytest.mark.parametrize("preset, sigmas", [
    ("qwen_image_glance", [1, .979192, .957516, .934917, .911335, .886705, .745073, .56295, .32008, .02, 0]),
    ("flux_dev_glance", [1, .986979, .973204, .958609, .943119, .926647, .825702, .677987, .4412, .06055, 0]),
])
def test_presets_are_the_papers_schedules(node, flux, comfy, preset, sigmas):
    out, switch, plot = node.execute(flux, preset, 1, 1, 0.5, "simple").args
    torch.testing.assert_close(out, torch.tensor(sigmas, dtype=torch.float32))
    assert sigmas[5] < switch < sigmas[4]  # exactly 5 slow steps, then 5 fast
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= float(plot.min()) and float(plot.max()) <= 1


@pytest.mark.parametrize("scheduler", ["simple", "normal", "beta"])
def test_split_follows_model_scheduler(node, flux, scheduler):
    sigmas, switch, _ = node.execute(flux, "split_from_model_scheduler", 7, 3, 0.85, scheduler).args
    assert len(sigmas) == 11 and switch == 0.85
    assert float(sigmas[0]) == pytest.approx(1.0, abs=1e-4) and float(sigmas[-1]) == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1]), "schedule must descend"
    assert float(sigmas[7]) == pytest.approx(0.85)
    assert all(float(s) > 0.85 for s in sigmas[:7]) and all(float(s) < 0.85 for s in sigmas[8:])


def test_split_uses_the_models_shift(node, comfy, flux):
    shifted = comfy.NODE_CLASS_MAPPINGS["ModelSamplingAuraFlow"]().patch_aura(flux, 6.0)[0]
    plain = node.execute(flux, "split_from_model_scheduler", 5, 5, 0.5, "simple").args[0]
    strong = node.execute(shifted, "split_from_model_scheduler", 5, 5, 0.5, "simple").args[0]
    assert float(strong[2]) > float(plain[2]), "a larger shift keeps more of the slow steps at high sigma"


def test_split_schedule_drives_the_sampler_switch(node, comfy, flux, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="comfyui-glance")
    sigmas, switch, _ = node.execute(flux, "split_from_model_scheduler", 4, 2, 0.7, "simple").args
    comfy.NODE_CLASS_MAPPINGS["GlancePhaseKSampler"].execute(
        model_slow=flux, model_fast=flux, positive=gm.conditioning("flux"), negative=gm.conditioning("flux", 2),
        latent_image=gm.empty_latent(8, 8), seed=0, steps=1, switch_sigma=switch, cfg_slow=1.0, cfg_fast=1.0,
        sampler_name="euler", scheduler="simple", sigmas=sigmas)
    assert "switched to fast model at step 5 of 6 (sigma=0.7000" in caplog.text


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 1.5, 0.0])
def test_split_rejects_switch_outside_schedule(node, flux, bad):
    with pytest.raises(ValueError, match="switch_sigma"):
        node.execute(flux, "split_from_model_scheduler", 5, 5, bad, "simple")
