"""The pack loads into the real host and registers its nodes."""
import pytest

pytestmark = pytest.mark.host


def test_nodes_registered(comfy):
    for node_id in ("GlancePhaseKSampler", "GlanceSigmas", "GlanceLoraLoader"):
        assert node_id in comfy.NODE_CLASS_MAPPINGS, node_id


def test_phase_sampler_matches_ksampler_smoke(comfy):
    import glance_models as gm
    import torch

    model = gm.make_flux()
    pos, neg = gm.conditioning("flux", 1), gm.conditioning("flux", 2)
    latent = gm.empty_latent(8, 8)
    ks = comfy.NODE_CLASS_MAPPINGS["KSampler"]()
    ref = ks.sample(model, 7, 6, 2.0, "euler", "simple", pos, neg, latent)[0]["samples"]
    node = comfy.NODE_CLASS_MAPPINGS["GlancePhaseKSampler"]
    out = node.execute(model_slow=model, model_fast=model, positive=pos, negative=neg, latent_image=latent, seed=7,
                       steps=6, switch_sigma=0.5, cfg_slow=2.0, cfg_fast=2.0, sampler_name="euler", scheduler="simple")
    got = out.args[0]["samples"]
    print((got - ref).abs().max())
    torch.testing.assert_close(got, ref)
