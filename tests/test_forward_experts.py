"""Forward-pass experts (GlanceLoraLoader apply=forward): same pictures as merged LoRAs, base never written, one load."""
from benchmarks import models as gm
import pytest
import torch

pytestmark = pytest.mark.host

SAMPLERS = ["euler", "dpmpp_2m", "euler_ancestral", "euler_cfg_pp"]


@pytest.fixture(scope="module")
def flux(comfy):
    return gm.make_flux(seed=3)


@pytest.fixture(scope="module")
def flux_bf16(comfy):
    return gm.make_flux(seed=3, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def conds():
    return gm.conditioning("flux", 1), gm.conditioning("flux", 2)


@pytest.fixture(scope="module")
def lora_files(base_dir, flux):
    loras = base_dir / "models" / "loras"
    modules = gm.linear_modules(flux, "attn") + gm.linear_modules(flux, "linear1")
    gm.save_lora(gm.random_lora(flux, modules, rank=4, seed=21, scale=0.3), loras / "fwd" / "slow.safetensors")
    gm.save_lora(gm.random_lora(flux, modules, rank=4, seed=22, scale=0.3), loras / "fwd" / "fast.safetensors")
    return "fwd/slow.safetensors", "fwd/fast.safetensors"


def experts(comfy, model, files, apply, strengths=(1.0, 1.0)):
    return gm.run_node(comfy, "GlanceLoraLoader", model=model, slow_lora=files[0], strength_slow=strengths[0],
                       fast_lora=files[1], strength_fast=strengths[1], apply=apply)


def phase(comfy, slow, fast, conds, latent, **kw):
    args = dict(seed=5, steps=6, switch_sigma=0.8, cfg_slow=3.0, cfg_fast=2.0, sampler_name="euler", scheduler="simple")
    args.update(kw)
    return gm.run_node(comfy, "GlancePhaseKSampler", model_slow=slow, model_fast=fast, positive=conds[0],
                       negative=conds[1], latent_image=latent, **args)[0]["samples"]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("strengths", [(1.0, 1.0), (0.6, 1.3)])
def test_forward_equals_merged(comfy, flux, conds, lora_files, sampler, strengths):
    latent = gm.empty_latent(8, 8)
    merged = phase(comfy, *experts(comfy, flux, lora_files, "merged", strengths), conds, latent, sampler_name=sampler)
    forward = phase(comfy, *experts(comfy, flux, lora_files, "forward", strengths), conds, latent, sampler_name=sampler)
    plain = phase(comfy, flux, flux, conds, latent, sampler_name=sampler)
    assert (merged - plain).abs().max() > 1e-2, "the LoRAs changed nothing: the comparison would prove nothing"
    torch.testing.assert_close(forward, merged, rtol=1e-4, atol=1e-4)


def test_forward_equals_merged_for_bf16_weights(comfy, flux_bf16, conds, lora_files):
    assert next(flux_bf16.model.diffusion_model.parameters()).dtype == torch.bfloat16
    latent = gm.empty_latent(8, 8)
    merged = phase(comfy, *experts(comfy, flux_bf16, lora_files, "merged"), conds, latent)
    forward = phase(comfy, *experts(comfy, flux_bf16, lora_files, "forward"), conds, latent)
    plain = phase(comfy, flux_bf16, flux_bf16, conds, latent)
    # Merging rounds base + delta to bf16; the forward pass adds the delta unrounded: bf16-sized differences only.
    scale = float(merged.abs().max())
    assert float((merged - plain).abs().max()) > 0.05 * scale
    torch.testing.assert_close(forward, merged, rtol=0, atol=0.02 * scale)


def test_each_phase_runs_its_own_expert(comfy, flux, conds, lora_files):
    """Observed at the model: one phase with the LoRA on one side only equals the run with that expert alone."""
    latent = gm.empty_latent(8, 8)
    slow, fast = experts(comfy, flux, lora_files, "forward")
    slow_only, _ = experts(comfy, flux, (lora_files[0], "None"), "merged")
    _, fast_only = experts(comfy, flux, ("None", lora_files[1]), "merged")
    ref_slow = phase(comfy, slow_only, flux, conds, latent)
    ref_fast = phase(comfy, flux, fast_only, conds, latent)
    torch.testing.assert_close(phase(comfy, slow, flux, conds, latent), ref_slow, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(phase(comfy, flux, fast, conds, latent), ref_fast, rtol=1e-4, atol=1e-4)
    assert (ref_slow - ref_fast).abs().max() > 1e-2


def _param_state(model):
    return {n: (id(p), p.data_ptr(), p._version, p.detach().clone()) for n, p in model.model.diffusion_model.named_parameters()}


def test_no_base_weight_written_and_one_load_per_run(comfy, conds, lora_files):
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    base = gm.make_flux(seed=3)
    loads = []
    base.add_callback(pe.CallbacksMP.ON_LOAD, lambda patcher, *a: loads.append(patcher))
    mm.unload_all_models()
    before = _param_state(base)
    slow, fast = experts(comfy, base, lora_files, "forward")
    latent = gm.empty_latent(8, 8)
    phase(comfy, slow, fast, conds, latent)
    first = len(loads)
    phase(comfy, slow, fast, conds, latent)
    assert len(loads) - first == 0, "a second run loaded the model again"
    assert first == 1, f"the first run loaded the model {first} times"
    after = _param_state(base)
    changed = [n for n in before if before[n][:3] != after[n][:3] or not torch.equal(before[n][3], after[n][3])]
    assert not changed, f"base parameters replaced, moved or written: {changed[:3]}"
    assert not base.patches and not slow.patches and not fast.patches


def test_merged_mode_moves_weights_forward_mode_does_not(comfy, conds, lora_files):
    """What the forward mode saves, seen from outside: the merged run rewrites base weights at the switch."""
    import comfy.model_management as mm

    base = gm.make_flux(seed=3)
    module = gm.linear_modules(base, "double_blocks.0.img_attn.qkv")[0]
    versions = []

    def watch(apply_model, args):  # the weight in place at each model call: object, storage, version, values
        live = dict(base.model.diffusion_model.named_parameters())[module + ".weight"]
        versions.append((id(live), live.data_ptr(), live._version, float(live.double().sum())))
        return apply_model(args["input"], args["timestep"], **args["c"])

    for apply in ("merged", "forward"):
        mm.unload_all_models()
        slow, fast = experts(comfy, base, lora_files, apply)
        slow.set_model_unet_function_wrapper(watch)
        fast.set_model_unet_function_wrapper(watch)
        versions.clear()
        phase(comfy, slow, fast, conds, gm.empty_latent(8, 8))
        if apply == "merged":
            assert len({v[3] for v in versions}) == 2, "merged experts did not swap the weight's values at the switch"
        else:
            assert len(set(versions)) == 1, "forward experts wrote a base weight during the run"
    mm.unload_all_models()
