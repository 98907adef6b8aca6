"""GlancePhaseKSampler on the real host: parity with KSampler, per-step routing, weight safety, composition."""
import logging
import math

from benchmarks import models as gm
import pytest
import torch

pytestmark = pytest.mark.host

STEPS = 6
SWITCH = 0.8  # Flux, simple scheduler, 6 steps: 1, .9405, .8633 slow | .7595, .6123, .3872 fast


@pytest.fixture(scope="module")
def flux(comfy):
    return gm.make_flux(seed=3)


@pytest.fixture(scope="module")
def conds():
    return gm.conditioning("flux", 1), gm.conditioning("flux", 2)


def run_phase(comfy, slow, fast, pos, neg, latent, **kw):
    args = dict(seed=11, steps=STEPS, switch_sigma=SWITCH, cfg_slow=2.5, cfg_fast=2.5, sampler_name="euler", scheduler="simple")
    args.update(kw)
    node = comfy.NODE_CLASS_MAPPINGS["GlancePhaseKSampler"]
    return node.execute(model_slow=slow, model_fast=fast, positive=pos, negative=neg, latent_image=latent, **args).args[0]["samples"]


def run_ksampler(comfy, model, pos, neg, latent, sampler="euler", cfg=2.5, seed=11, steps=STEPS):
    return comfy.NODE_CLASS_MAPPINGS["KSampler"]().sample(model, seed, steps, cfg, sampler, "simple", pos, neg, latent)[0]["samples"]


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde"])
def test_same_model_equals_stock_ksampler(comfy, flux, conds, sampler):
    latent = gm.empty_latent(8, 8)
    ref = run_ksampler(comfy, flux, *conds, latent, sampler=sampler)
    got = run_phase(comfy, flux, flux, *conds, latent, sampler_name=sampler)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["denoise", "noise_mask", "batch_index"])
def test_same_model_equals_stock_ksampler_img2img_inpaint_batch(comfy, flux, conds, case):
    start = torch.randn((2 if case == "batch_index" else 1, 16, 8, 8), generator=torch.Generator().manual_seed(4))
    latent, kw = {"samples": start}, {}
    if case == "denoise":
        kw["denoise"] = 0.6
    elif case == "noise_mask":
        mask = torch.zeros((1, 1, 8, 8))
        mask[..., 2:6, 2:6] = 1.0
        latent["noise_mask"] = mask
    else:
        latent["batch_index"] = [3, 7]
    ref = comfy.NODE_CLASS_MAPPINGS["KSampler"]().sample(flux, 11, STEPS, 2.5, "dpmpp_2m", "simple", *conds, latent,
                                                         denoise=kw.get("denoise", 1.0))[0]["samples"]
    got = run_phase(comfy, flux, flux, *conds, latent, sampler_name="dpmpp_2m", **kw)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    if case == "noise_mask":  # outside the mask the latent is kept
        torch.testing.assert_close(got[..., :2, :], start[..., :2, :], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen", "sd3_file"])
def test_other_architectures_equal_stock(comfy, base_dir, kind):
    if kind == "qwen":
        model, pos, neg = gm.make_qwen(seed=4), gm.conditioning("qwen", 1), gm.conditioning("qwen", 2)
    else:
        name = "glance_test_mmdit.safetensors"
        gm.write_sd3_file(base_dir / "models" / "diffusion_models" / name, seed=5)
        model = comfy.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(name, "default")[0]
        assert type(model.model).__name__ == "SD3"
        pos, neg = gm.conditioning("sd3", 1), gm.conditioning("sd3", 2)
    latent = gm.empty_latent(8, 8)
    ref = run_ksampler(comfy, model, pos, neg, latent, sampler="dpmpp_2m")
    got = run_phase(comfy, model, model, pos, neg, latent, sampler_name="dpmpp_2m")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def with_lora(model, lora_sd, strength=1.0):
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, None, lora_sd, strength, 0)[0]


def lora_clone(flux, seed, modules):
    return with_lora(flux, gm.random_lora(flux, modules, seed=seed))




def test_each_step_runs_on_its_phase_model_with_its_weights(comfy, flux, conds):
    """Which model ran at each sigma, and with which merged LoRA weights in place at that moment."""
    import comfy.model_management as mm

    mm.unload_all_models()
    module = gm.linear_modules(flux, "double_blocks.0.img_attn.qkv")[0]
    base_w = dict(flux.model.diffusion_model.named_parameters())[module + ".weight"].detach().clone()
    slow_sd, fast_sd = gm.random_lora(flux, [module], seed=1), gm.random_lora(flux, [module], seed=2)
    want = {"slow": base_w + slow_sd[f"diffusion_model.{module}.lora_up.weight"] @ slow_sd[f"diffusion_model.{module}.lora_down.weight"],
            "fast": base_w + fast_sd[f"diffusion_model.{module}.lora_up.weight"] @ fast_sd[f"diffusion_model.{module}.lora_down.weight"]}
    seen = []

    def recorder(phase):
        def wrapper(apply_model, args):
            live = dict(flux.model.diffusion_model.named_parameters())[module + ".weight"]
            seen.append((phase, float(args["timestep"][0]), torch.allclose(live, want[phase], atol=1e-5)))
            return apply_model(args["input"], args["timestep"], **args["c"])
        return wrapper

    slow, fast = with_lora(flux, slow_sd), with_lora(flux, fast_sd)
    slow.set_model_unet_function_wrapper(recorder("slow"))
    fast.set_model_unet_function_wrapper(recorder("fast"))
    run_phase(comfy, slow, fast, *conds, gm.empty_latent(8, 8))

    sigmas = [1.0, 0.9405, 0.8633, 0.7595, 0.6123, 0.3872]
    assert [(p, round(s, 4)) for p, s, _ in seen] == [("slow" if s > SWITCH else "fast", round(s, 4)) for s in sigmas]
    assert all(ok for _, _, ok in seen), f"a step ran with the other phase's weights: {seen}"


def recording(model, phase, seen):
    """A clone of ``model`` whose every evaluation is recorded as (phase, sigma): observed at the model itself."""
    clone = model.clone()

    def wrapper(apply_model, args):
        seen.append((phase, round(float(args["timestep"][0]), 3)))
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(wrapper)
    return clone


@pytest.mark.parametrize("sampler_name, expected", [
    # Heun's corrector evaluates at the next schedule point: the start of the next step, so its phase.
    ("heun", [("slow", 1.0), ("slow", 0.8), ("slow", 0.8), ("slow", 0.6), ("slow", 0.6), ("fast", 0.4),
              ("fast", 0.4), ("fast", 0.2), ("fast", 0.2)]),
    # DPM++ 2S evaluates between schedule points: a midpoint stays in the phase of the step it belongs to.
    ("dpmpp_2s_ancestral", None),
])
def test_substeps_stay_in_their_steps_phase(comfy, flux, conds, sampler_name, expected):
    """Through the GUIDER node and the host's SamplerCustomAdvanced, as a user wires it."""
    seen = []
    slow, fast = recording(flux, "slow", seen), recording(flux, "fast", seen)
    guider, = gm.run_node(comfy, "GlancePhaseGuider", model_slow=slow, model_fast=fast, positive=conds[0], negative=conds[1],
                          cfg_slow=2.0, cfg_fast=2.0, switch_sigma=0.5)
    sampler, = gm.run_node(comfy, "KSamplerSelect", sampler_name=sampler_name)
    noise, = gm.run_node(comfy, "RandomNoise", noise_seed=0)
    sigmas = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    out = gm.run_node(comfy, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                      latent_image=gm.empty_latent(8, 8))[0]
    assert torch.isfinite(out["samples"]).all()
    if expected is not None:
        assert seen == expected
    else:  # every evaluation above 0.4 (the first fast step's start) ran slow, every other fast, midpoints included
        midpoints = [s for _, s in seen if s not in (1.0, 0.8, 0.6, 0.4, 0.2)]
        assert midpoints, seen
        assert all((p == "slow") == (s > 0.4) for p, s in seen), seen


def test_logs_switch_and_single_phase(comfy, flux, conds, caplog):
    caplog.set_level(logging.INFO, logger="comfyui-glance")
    latent = gm.empty_latent(8, 8)
    run_phase(comfy, flux, flux, *conds, latent)
    assert f"switched to fast model at step 4 of {STEPS} (sigma=0.7595" in caplog.text
    for switch, ran in ((0.0, "slow"), (5.0, "fast")):
        caplog.clear()
        seen = []
        run_phase(comfy, recording(flux, "slow", seen), recording(flux, "fast", seen), *conds, latent, switch_sigma=switch)
        assert f"all 6 steps ran on the {ran} model" in caplog.text
        assert [p for p, _ in seen] == [ran] * STEPS, seen  # one call per step (cond and uncond batched)


def test_cfg_one_skips_negative_pass_per_phase(comfy, flux, conds):
    batches = []

    def counter(apply_model, args):
        batches.append((float(args["timestep"][0]), args["input"].shape[0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = flux.clone()
    model.set_model_unet_function_wrapper(counter)
    run_phase(comfy, model, model, *conds, gm.empty_latent(8, 8), cfg_slow=4.0, cfg_fast=1.0)
    # cond and uncond are batched together (batch 2) with CFG; cfg 1.0 runs the positive alone (batch 1).
    assert [b for s, b in batches] == [2, 2, 2, 1, 1, 1], batches


def weights_of(model):
    return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


def assert_same_weights(before, model):
    after = model.model.diffusion_model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"base weights changed: {changed[:3]}"


def test_base_weights_restored_after_runs_and_errors(comfy, flux, conds):
    import comfy.model_management as mm

    latent = gm.empty_latent(8, 8)
    mm.unload_all_models()
    before = weights_of(flux)
    ref = run_ksampler(comfy, flux, *conds, latent)
    modules = gm.linear_modules(flux, "attn")
    slow, fast = lora_clone(flux, 1, modules), lora_clone(flux, 2, modules)
    run_phase(comfy, slow, fast, *conds, latent)

    def boom(apply_model, args):
        raise RuntimeError("planned failure in the fast phase")

    failing_fast = lora_clone(flux, 3, modules)
    failing_fast.set_model_unet_function_wrapper(boom)
    with pytest.raises(RuntimeError, match="planned failure"):
        run_phase(comfy, slow, failing_fast, *conds, latent)

    after_stock = run_ksampler(comfy, flux, *conds, latent)
    torch.testing.assert_close(after_stock, ref, rtol=0, atol=0)
    mm.unload_all_models()
    assert_same_weights(before, flux)


def two_stage_reference(flux_slow, flux_fast, pos, neg, latent, cfg=2.5, seed=11):
    """The hand-wired stock way: SamplerCustom over the slow sigmas, then the rest without new noise."""
    import comfy.sample
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(flux_slow.get_model_object("model_sampling"), "simple", STEPS).cpu()
    k = next(i for i, s in enumerate(sigmas) if s <= SWITCH)
    sampler = comfy.samplers.sampler_object("euler")
    noise = comfy.sample.prepare_noise(latent["samples"], seed)
    mid = comfy.sample.sample_custom(flux_slow, noise, cfg, sampler, sigmas[: k + 1], pos, neg, latent["samples"], seed=seed)
    return comfy.sample.sample_custom(flux_fast, torch.zeros_like(mid), cfg, sampler, sigmas[k:], pos, neg, mid, seed=seed)


@pytest.mark.parametrize("patched", ["slow", "fast"])
def test_composes_with_model_sampling_shift(comfy, flux, conds, patched):
    """A core ModelSamplingAuraFlow patch on one input applies to that phase only, as with two stock samplers."""
    latent = gm.empty_latent(8, 8)
    shifted = comfy.NODE_CLASS_MAPPINGS["ModelSamplingAuraFlow"]().patch_aura(flux, 6.0)[0]
    slow, fast = (shifted, flux) if patched == "slow" else (flux, shifted)
    ref = two_stage_reference(slow, fast, *conds, latent)
    got = run_phase(comfy, slow, fast, *conds, latent)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    if patched == "slow":  # the schedule comes from model_slow's sampling, so there the shift shows
        plain = run_phase(comfy, flux, flux, *conds, latent)
        assert not torch.allclose(got, plain, atol=1e-3), "the shift patch had no effect"


@pytest.mark.parametrize("patched", ["slow", "fast"])
def test_composes_with_easycache(comfy, flux, conds, patched, caplog):
    caplog.set_level(logging.INFO)
    latent = gm.empty_latent(8, 8)
    easy = comfy.NODE_CLASS_MAPPINGS["EasyCache"]
    cached = easy.execute(flux, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False).args[0]
    slow, fast = (cached, flux) if patched == "slow" else (flux, cached)
    got = run_phase(comfy, slow, fast, *conds, latent, steps=10)
    assert "EasyCache enabled" in caplog.text
    skipped = [line for line in caplog.text.splitlines() if "EasyCache - skipped" in line]
    assert skipped and not skipped[-1].split("skipped ")[1].startswith("0/"), skipped
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("bad, message", [
    (dict(switch_sigma=float("nan")), "switch_sigma=nan"),
    (dict(switch_sigma=-0.5), "switch_sigma=-0.5"),
    (dict(steps=0), "steps=0"),
    (dict(cfg_fast=float("inf")), "cfg_fast=inf"),
])
def test_bad_numbers_are_clear_errors(comfy, flux, conds, bad, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        run_phase(comfy, flux, flux, *conds, gm.empty_latent(8, 8), **bad)
    node = comfy.NODE_CLASS_MAPPINGS["GlancePhaseKSampler"]
    if "switch_sigma" in bad or "steps" in bad:
        assert isinstance(node.validate_inputs(**bad), str)


def test_mismatched_latent_is_a_clear_error(comfy, flux, conds):
    sd_latent = {"samples": torch.randn((1, 4, 8, 8))}
    with pytest.raises(ValueError, match="latent_image has 4 channels but model_slow"):
        run_phase(comfy, flux, flux, *conds, sd_latent)


def test_lora_loader_refuses_other_architecture_and_missing_files(comfy, base_dir, flux):
    qwen = gm.make_qwen()
    loras = base_dir / "models" / "loras"
    gm.save_lora(gm.random_lora(flux, gm.linear_modules(flux, "attn")), loras / "flux_only.safetensors")
    gm.save_lora(gm.random_lora(qwen, gm.linear_modules(qwen, "attn")), loras / "qwen_ok.safetensors")
    loader = comfy.NODE_CLASS_MAPPINGS["GlanceLoraLoader"]
    with pytest.raises(ValueError, match=r"slow_lora 'flux_only.safetensors'.*match this QwenImage model"):
        loader.execute(qwen, "flux_only.safetensors", 1.0, "qwen_ok.safetensors", 1.0)
    with pytest.raises(FileNotFoundError, match=r"fast_lora: 'gone.safetensors' is not in models/loras"):
        loader.execute(qwen, "qwen_ok.safetensors", 1.0, "gone.safetensors", 1.0)
    slow, fast = loader.execute(qwen, "qwen_ok.safetensors", 1.0, "None", 1.0, apply="merged").args
    assert len(slow.patches) > 0 and len(fast.patches) == 0 and len(qwen.patches) == 0


def test_lora_loader_output_drives_phase_sampler(comfy, base_dir, flux, conds):
    loras = base_dir / "models" / "loras"
    modules = gm.linear_modules(flux, "attn")
    gm.save_lora(gm.random_lora(flux, modules, seed=7), loras / "phase" / "slow.safetensors")
    gm.save_lora(gm.random_lora(flux, modules, seed=8), loras / "phase" / "fast.safetensors")
    slow, fast = comfy.NODE_CLASS_MAPPINGS["GlanceLoraLoader"].execute(
        flux, "phase/slow.safetensors", 1.0, "phase/fast.safetensors", 0.8, apply="merged").args
    assert len(slow.patches) == len(modules) and len(fast.patches) == len(modules)
    out = run_phase(comfy, slow, fast, *conds, gm.empty_latent(8, 8))
    assert torch.isfinite(out).all()
    assert not math.isclose(float(out.abs().sum()), float(run_phase(comfy, flux, flux, *conds, gm.empty_latent(8, 8)).abs().sum()))
