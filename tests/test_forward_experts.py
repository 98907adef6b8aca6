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


@pytest.fixture(scope="module")
def upstream_lora(base_dir, flux):
    """A LoRA on the same layers as the experts (and others), for loaders and hooks ahead of GlanceLoraLoader."""
    modules = gm.linear_modules(flux, "attn") + gm.linear_modules(flux, "linear2")
    gm.save_lora(gm.random_lora(flux, modules, rank=4, seed=23, scale=0.3), base_dir / "models" / "loras" / "fwd" / "upstream.safetensors")
    return "fwd/upstream.safetensors"


def test_composes_with_a_lora_merged_upstream(comfy, flux, conds, lora_files, upstream_lora):
    """A stock LoraLoaderModelOnly before GlanceLoraLoader: its weight patch stays merged, the experts add to it."""
    loaded = gm.run_node(comfy, "LoraLoaderModelOnly", model=flux, lora_name=upstream_lora, strength_model=0.8)[0]
    latent = gm.empty_latent(8, 8)
    forward = phase(comfy, *experts(comfy, loaded, lora_files, "forward"), conds, latent)
    merged = phase(comfy, *experts(comfy, loaded, lora_files, "merged"), conds, latent)
    without_upstream = phase(comfy, *experts(comfy, flux, lora_files, "forward"), conds, latent)
    assert (forward - without_upstream).abs().max() > 1e-2, "the upstream LoRA changed nothing"
    torch.testing.assert_close(forward, merged, rtol=1e-4, atol=1e-4)


def test_composes_with_conditioning_hooks(comfy, flux, conds, lora_files, upstream_lora):
    """A hook LoRA on the positive conditioning (Create Hook LoRA + Cond Set Props) acts in both phases."""
    hooks = gm.run_node(comfy, "CreateHookLoraModelOnly", lora_name=upstream_lora, strength_model=1.0)[0]
    hooked = gm.run_node(comfy, "ConditioningSetProperties", cond_NEW=conds[0], strength=1.0,
                         set_cond_area="default", hooks=hooks)[0]
    latent = gm.empty_latent(8, 8)
    forward = phase(comfy, *experts(comfy, flux, lora_files, "forward"), (hooked, conds[1]), latent)
    merged = phase(comfy, *experts(comfy, flux, lora_files, "merged"), (hooked, conds[1]), latent)
    unhooked = phase(comfy, *experts(comfy, flux, lora_files, "forward"), conds, latent)
    assert (forward - unhooked).abs().max() > 1e-2, "the hook LoRA changed nothing"
    torch.testing.assert_close(forward, merged, rtol=1e-4, atol=1e-4)


def test_forward_experts_on_fp8_weights(comfy, conds, lora_files):
    """fp8_e4m3fn storage, fp32 compute: the experts add to the layer's output unrounded. Reference: the same
    (fp8-valued) weights stored in fp32 with the LoRAs merged in fp32."""
    fp8 = gm.make_flux(seed=3, dtype=torch.float8_e4m3fn)
    assert next(fp8.model.diffusion_model.parameters()).dtype == torch.float8_e4m3fn
    exact = gm.make_flux(seed=3)
    with torch.no_grad():
        stored = dict(fp8.model.diffusion_model.named_parameters())
        for name, p in exact.model.diffusion_model.named_parameters():
            p.copy_(stored[name].float())
    latent = gm.empty_latent(8, 8)
    forward = phase(comfy, *experts(comfy, fp8, lora_files, "forward"), conds, latent)
    reference = phase(comfy, *experts(comfy, exact, lora_files, "merged"), conds, latent)
    plain = phase(comfy, exact, exact, conds, latent)
    assert (reference - plain).abs().max() > 1e-2
    torch.testing.assert_close(forward, reference, rtol=1e-4, atol=1e-4)


def test_each_phase_prepares_its_own_patcher(comfy, flux, conds, lora_files):
    """ON_PREPARE_STATE (what hooks and conditioning schedules act on) reaches the patcher of the step's phase."""
    import comfy.patcher_extension as pe

    slow, fast = experts(comfy, flux, lora_files, "forward")
    seen = []
    for name, clone in (("slow", slow), ("fast", fast)):
        clone.add_callback(pe.CallbacksMP.ON_PREPARE_STATE,
                           lambda patcher, t, *a, name=name: seen.append((name, patcher, float(t.flatten()[0]))))
    phase(comfy, slow, fast, conds, gm.empty_latent(8, 8), steps=6, switch_sigma=0.8)
    assert {n for n, *_ in seen} == {"slow", "fast"}
    assert all(patcher is (slow if n == "slow" else fast) for n, patcher, _ in seen)
    assert all(t > 0.8 for n, _, t in seen if n == "slow"), seen
    assert all(t <= 0.8 for n, _, t in seen if n == "fast"), seen


def test_composes_with_easycache_on_the_experts(comfy, flux, conds, lora_files, caplog):
    """EasyCache on the slow expert's MODEL (after GlanceLoraLoader): it caches, and with a threshold of 0 it skips
    nothing and changes nothing."""
    import logging

    caplog.set_level(logging.INFO)
    slow, fast = experts(comfy, flux, lora_files, "forward")
    easy = comfy.NODE_CLASS_MAPPINGS["EasyCache"]
    latent = gm.empty_latent(8, 8)
    exact = easy.execute(slow, reuse_threshold=0.0, start_percent=0.0, end_percent=1.0, verbose=False).args[0]
    torch.testing.assert_close(phase(comfy, exact, fast, conds, latent, steps=10),
                               phase(comfy, slow, fast, conds, latent, steps=10), rtol=1e-5, atol=1e-5)
    caplog.clear()
    cached = easy.execute(slow, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False).args[0]
    got = phase(comfy, cached, fast, conds, latent, steps=10)
    skipped = [line for line in caplog.text.splitlines() if "EasyCache - skipped" in line]
    assert skipped and not skipped[-1].split("skipped ")[1].startswith("0/"), skipped
    assert torch.isfinite(got).all()
