"""Inputs and files that must be refused with an error naming them, before any long work: save names, pairs saved
as a unit, non-finite sigmas and LoRAs, LoRAs of the wrong shapes, saved schedules, missing LoRA files.

Each test goes through the nodes as the host runs them (``NODE_CLASS_MAPPINGS[...].execute`` inside inference mode);
"before any work" is observed with an APPLY_MODEL wrapper that counts the model's forward passes.
"""
from __future__ import annotations

import json
import math

import pytest
import safetensors
import torch

from benchmarks import models as gm
from glance_nodes import train

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]

SAMPLED = "glance-test-count"


def counted(model):
    """A clone of ``model`` whose forward passes are counted in the returned list."""
    import comfy.patcher_extension as pe

    calls = []

    def count(executor, *args, **kwargs):
        calls.append(1)
        return executor(*args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, SAMPLED, count)
    return clone, calls


def loras(base_dir):
    return base_dir / "models" / "loras"


# --- save names (items 2, 5, 6) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("bad_inputs/afile.safetensors/sub", r"^save_name: 'bad_inputs/afile.safetensors' is a file in models/loras"),
    (".", r"^save_name: '\.'"),
    ("bad_inputs/..", r"^save_name: 'bad_inputs/\.\.' contains"),
    ("bad_inputs/...", r"^save_name: 'bad_inputs/\.\.\.' would save '\.\.\.\.safetensors', which no file list shows"),
    ("bad\x00name", r"^save_name: 'bad\\x00name' contains a NUL character"),
    ("x" * 250, r"^save_name: 'x{40}\.\.\.' is too long for a file name"),
    ("bad_inputs/" + "d" * 300 + "/x", r"^save_name: 'd{40}\.\.\.' is too long"),
])
def test_train_save_name_is_checked_before_training(comfy, base_dir, name, message):
    (loras(base_dir) / "bad_inputs").mkdir(parents=True, exist_ok=True)
    (loras(base_dir) / "bad_inputs" / "afile.safetensors").write_bytes(b"not a folder")
    before = sorted(p for p in base_dir.rglob("*") if p.is_file())
    model, calls = counted(gm.make_flux())
    with pytest.raises(ValueError, match=message):
        train(comfy, name, model=model)
    assert calls == []  # refused before the first forward pass
    assert sorted(p for p in base_dir.rglob("*") if p.is_file()) == before


def test_fit_save_name_is_checked_before_fitting(demo_kit, base_dir):
    (base_dir / "models" / "glance_schedules" / "bad_inputs").mkdir(parents=True, exist_ok=True)
    (base_dir / "models" / "glance_schedules" / "bad_inputs" / "afile.json").write_text("{}")
    model, calls = counted(demo_kit["model"])
    for name, message in ((".", r"^save_name: '\.'"), ("f" * 250, r"^save_name: 'f{40}\.\.\.' is too long"),
                          ("bad_inputs/afile.json/x", r"^save_name: 'bad_inputs/afile.json' is a file"),
                          ("n\x00ul", r"^save_name: 'n\\x00ul' contains a NUL character")):
        with pytest.raises(ValueError, match=message):
            with torch.inference_mode():
                demo_kit["n"]["GlanceFitSchedule"].execute(
                    model=model, positive=demo_kit["conds"][demo_kit["train"]], negative=demo_kit["negative"], cfg=3.0,
                    latent_image=demo_kit["latent"], steps_slow=1, steps_fast=1, fine_steps=4, scheduler="simple",
                    rollouts=1, seed=0, switch_sigma=0.0, save_name=name)
    assert calls == []
    assert not list((base_dir / "models" / "glance_schedules").glob(".*json"))


def test_fewer_rollouts_than_joined_prompts_are_refused_before_any_work(demo_kit, base_dir):
    """The teacher's rollouts take turns over the prompts joined in positive: fewer rollouts than prompts would leave
    the last prompts unsampled, silently. Both nodes refuse it, naming rollouts and the count needed."""
    three = [entry for c in demo_kit["conds"].values() for entry in c]  # Conditioning (Combine) of three prompts
    assert len(three) == 3
    model, calls = counted(demo_kit["model"])
    before = sorted(p for p in base_dir.rglob("*") if p.is_file())
    message = r"^rollouts=2: positive joins 3 prompts .* Set rollouts to at least 3"
    with pytest.raises(ValueError, match=message), torch.inference_mode():
        demo_kit["n"]["GlanceFitSchedule"].execute(
            model=model, positive=three, negative=demo_kit["negative"], cfg=3.0, latent_image=demo_kit["latent"],
            steps_slow=1, steps_fast=1, fine_steps=4, scheduler="simple", rollouts=2, seed=0, switch_sigma=0.0,
            save_name="bad_inputs/few_rollouts")
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 6)[[0, 2, 6]]
    with pytest.raises(ValueError, match=message), torch.inference_mode():
        demo_kit["n"]["GlanceDistillExperts"].execute(
            model=model, positive=three, negative=demo_kit["negative"], cfg=3.0, latent_image=demo_kit["latent"],
            sigmas=sigmas, switch_sigma=(float(sigmas[0]) + float(sigmas[1])) / 2, rank=4, learning_rate=1e-3, steps=1,
            rollouts=2, seed=0, save_name_slow="few/slow", save_name_fast="few/fast")
    assert calls == []  # not one model pass
    assert sorted(p for p in base_dir.rglob("*") if p.is_file()) == before


# --- the distilled pair: checked before any work, saved as a unit (item 2) ----------------------------------------

@pytest.fixture(scope="module")
def kit(demo_kit):
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(demo_kit["model"].get_model_object("model_sampling"), "simple", 6)[[0, 2, 6]]
    return {**demo_kit, "positive": demo_kit["conds"][demo_kit["train"]], "sigmas": sigmas,
            "switch": (float(sigmas[0]) + float(sigmas[1])) / 2}  # 1 slow + 1 fast step


def distill(kit, model=None, **overrides):
    args = dict(model=model or kit["model"], positive=kit["positive"], negative=kit["negative"], cfg=3.0,
                latent_image=kit["latent"], sigmas=kit["sigmas"], switch_sigma=kit["switch"], rank=4, learning_rate=1e-3,
                steps=1, rollouts=1, seed=0, save_name_slow="pair/slow", save_name_fast="pair/fast", cfg_fast=-1.0,
                fine_steps=6, scheduler="simple", gradient_checkpointing=False)
    args.update(overrides)
    with torch.inference_mode():
        return kit["n"]["GlanceDistillExperts"].execute(**args).args


def test_distill_fast_name_under_a_file_is_refused_before_any_work(kit, base_dir):
    (loras(base_dir) / "pair").mkdir(parents=True, exist_ok=True)
    (loras(base_dir) / "pair" / "afile.safetensors").write_bytes(b"not a folder")
    model, calls = counted(kit["model"])
    with pytest.raises(ValueError, match=r"^save_name_fast: 'pair/afile.safetensors' is a file in models/loras"):
        distill(kit, model, save_name_slow="pair/under_slow", save_name_fast="pair/afile.safetensors/sub")
    assert calls == []  # not even the teacher ran
    assert not (loras(base_dir) / "pair" / "under_slow.safetensors").exists()


def test_distilled_pair_is_saved_whole_or_not_at_all(kit, base_dir):
    """The fast expert's name is taken while the experts train: neither expert is saved."""
    import comfy.patcher_extension as pe

    taken = loras(base_dir) / "pair" / "race_fast.safetensors"

    def take_the_fast_name(executor, *args, **kwargs):
        if torch.is_grad_enabled() and not taken.exists():  # training (the teacher runs without gradients)
            taken.parent.mkdir(parents=True, exist_ok=True)
            taken.write_bytes(b"someone else's file")
        return executor(*args, **kwargs)

    model = kit["model"].clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, SAMPLED, take_the_fast_name)
    with pytest.raises(FileExistsError, match=r"^save_name_fast: 'race_fast.safetensors' appeared in models/loras "
                                              r"while training; none of the 2 files was saved"):
        distill(kit, model, save_name_slow="pair/race_slow", save_name_fast="pair/race_fast")
    assert taken.read_bytes() == b"someone else's file"
    assert not (loras(base_dir) / "pair" / "race_slow.safetensors").exists()
    assert not [p for p in taken.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_half_pair_left_by_a_cut_run_does_not_block_the_rerun(kit, base_dir):
    slow, fast = loras(base_dir) / "pair" / "rerun_slow.safetensors", loras(base_dir) / "pair" / "rerun_fast.safetensors"
    distill(kit, save_name_slow="pair/rerun_slow", save_name_fast="pair/rerun_fast")
    fast.unlink()  # what a run cut between the two names leaves: the slow expert alone
    out = distill(kit, save_name_slow="pair/rerun_slow", save_name_fast="pair/rerun_fast", seed=1)
    assert out[2:4] == ("pair/rerun_slow.safetensors", "pair/rerun_fast.safetensors")
    for path in (slow, fast):
        with safetensors.safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert json.loads(meta["glance.pair"]) == [out[2], out[3]] and meta["glance.seed"] == "1"
    # A complete pair, or a file of another pair, still blocks: nothing is overwritten.
    with pytest.raises(FileExistsError, match=r"^save_name_slow: 'pair/rerun_slow.safetensors' already exists"):
        distill(kit, save_name_slow="pair/rerun_slow", save_name_fast="pair/other_fast")


# --- non-finite sigmas and LoRAs, LoRAs of the wrong shapes (items 3, 4, 6, 9) ------------------------------------

@pytest.fixture(scope="module")
def flux(comfy):
    return gm.make_flux(seed=3)


def phase(comfy, model, **kw):
    args = dict(model_slow=model, model_fast=model, positive=gm.conditioning("flux", 1), negative=gm.conditioning("flux", 2),
                latent_image=gm.empty_latent(8, 8), seed=1, steps=4, switch_sigma=0.8, cfg_slow=2.0, cfg_fast=2.0,
                sampler_name="euler", scheduler="simple")
    args.update(kw)
    with torch.inference_mode():
        return comfy.NODE_CLASS_MAPPINGS["GlancePhaseKSampler"].execute(**args).args[0]["samples"]


def test_non_finite_sigmas_and_denoise_are_refused(comfy, flux):
    model, calls = counted(flux)
    with pytest.raises(ValueError, match=r"^sigmas: value 1 of the schedule is nan"):
        phase(comfy, model, sigmas=torch.tensor([1.0, float("nan"), 0.5, 0.0]))
    with pytest.raises(ValueError, match=r"^sigmas: value 0 of the schedule is inf"):
        phase(comfy, model, sigmas=torch.tensor([float("inf"), 0.5, 0.0]))
    with pytest.raises(ValueError, match=r"^denoise=nan"):
        phase(comfy, model, denoise=float("nan"))
    # The guider for SamplerCustomAdvanced refuses them too.
    import comfy.samplers as samplers

    with torch.inference_mode():
        guider = comfy.NODE_CLASS_MAPPINGS["GlancePhaseGuider"].execute(
            model, model, gm.conditioning("flux", 1), gm.conditioning("flux", 2), 2.0, 2.0, 0.8).args[0]
        latent = torch.zeros((1, 16, 8, 8))
        with pytest.raises(ValueError, match=r"^sigmas: value 2 of the schedule is nan"):
            guider.sample(torch.randn_like(latent), latent, samplers.sampler_object("euler"),
                          torch.tensor([1.0, 0.5, float("nan"), 0.0]))
    assert calls == []
    # Ascending schedules stay allowed (unsampling runs them).
    assert torch.isfinite(phase(comfy, flux, sigmas=torch.tensor([0.1, 0.3, 0.6]))).all()


def write_lora(base_dir, name, sd):
    return gm.save_lora(sd, loras(base_dir) / "bad_inputs" / name).name


def loader(comfy, model, slow, fast="None", apply="forward"):
    with torch.inference_mode():
        return comfy.NODE_CLASS_MAPPINGS["GlanceLoraLoader"].execute(model, slow, 1.0, fast, 1.0, apply=apply).args


def test_non_finite_loras_are_refused_naming_the_file_and_tensor(comfy, base_dir, flux):
    modules = gm.linear_modules(flux, "attn")
    nan_weights = gm.random_lora(flux, modules)
    nan_weights[f"diffusion_model.{modules[1]}.lora_up.weight"][0, 0] = float("nan")
    inf_alpha = gm.random_lora(flux, modules)
    inf_alpha[f"diffusion_model.{modules[0]}.alpha"] = torch.tensor(float("inf"))
    write_lora(base_dir, "nan_weights.safetensors", nan_weights)
    write_lora(base_dir, "inf_alpha.safetensors", inf_alpha)
    for apply in ("forward", "merged"):
        with pytest.raises(ValueError, match=rf"^slow_lora 'bad_inputs/nan_weights.safetensors': tensor "
                                             rf"'diffusion_model.{modules[1]}.lora_up.weight' holds NaN"):
            loader(comfy, flux, "bad_inputs/nan_weights.safetensors", apply=apply)
        with pytest.raises(ValueError, match=rf"^fast_lora 'bad_inputs/inf_alpha.safetensors': tensor "
                                             rf"'diffusion_model.{modules[0]}.alpha' holds NaN or infinite"):
            loader(comfy, flux, "None", "bad_inputs/inf_alpha.safetensors", apply=apply)


def test_lora_of_the_wrong_shapes_is_refused_naming_the_first_misfit(comfy, base_dir, flux):
    modules = gm.linear_modules(flux, "attn")
    sd = gm.random_lora(flux, modules)
    bad = modules[2]
    sd[f"diffusion_model.{bad}.lora_down.weight"] = torch.randn((4, 40))  # the layer takes more inputs
    write_lora(base_dir, "misfit.safetensors", sd)
    for apply in ("forward", "merged"):
        with pytest.raises(ValueError, match=rf"^slow_lora 'bad_inputs/misfit.safetensors' does not fit this Flux model: "
                                             rf"first misfit 'diffusion_model.{bad}.weight'"):
            loader(comfy, flux, "bad_inputs/misfit.safetensors", apply=apply)


def test_corrupt_lora_file_is_named(comfy, base_dir, flux):
    path = loras(base_dir) / "bad_inputs" / "corrupt.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match=r"^slow_lora 'bad_inputs/corrupt.safetensors' is not a valid LoRA file"):
        loader(comfy, flux, "bad_inputs/corrupt.safetensors")


def test_lora_loader_names_both_missing_files(comfy, flux):
    node = comfy.NODE_CLASS_MAPPINGS["GlanceLoraLoader"]
    problem = node.validate_inputs(slow_lora="gone_slow.safetensors", fast_lora="gone_fast.safetensors")
    assert "slow_lora: 'gone_slow.safetensors'" in problem and "fast_lora: 'gone_fast.safetensors'" in problem
    with pytest.raises(FileNotFoundError, match=r"^slow_lora: 'gone_slow.safetensors' and fast_lora: "
                                                r"'gone_fast.safetensors' are not in models/loras"):
        loader(comfy, flux, "gone_slow.safetensors", "gone_fast.safetensors")


# --- training numbers and sizes (item 6) -------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["alpha", "learning_rate"])
def test_nan_training_numbers_are_refused_naming_the_input(comfy, base_dir, field):
    model, calls = counted(gm.make_flux())
    with pytest.raises(ValueError, match=rf"^{field}=nan is not a finite number"):
        train(comfy, f"bad_inputs/nan_{field}", model=model, **{field: float("nan")})
    assert calls == []


def test_training_resolution_beyond_the_position_embedding_is_refused(comfy, base_dir):
    model, calls = counted(gm.make_sd3())  # pos_embed of 32 x 32 patches of 2 latent pixels: 512 px a side
    with pytest.raises(ValueError, match=r"^resolution: an image width of 1024 px is more than this SD3 model's position "
                                         r"embedding covers \(512 px a side\); use 512 px or less"):
        train(comfy, "bad_inputs/too_big", model=model, kind="sd3", resolution=1024)
    assert calls == []
    assert not (loras(base_dir) / "bad_inputs" / "too_big.safetensors").exists()


# --- saved schedules (item 7) ------------------------------------------------------------------------------------

GOOD = {"format": "glance-schedule", "sigmas": [1.0, 0.8, 0.4, 0.0], "switch_sigma": 0.9}


@pytest.mark.parametrize("change, message", [
    ({"model": [1, 2]}, r"\"model\" entry is not an object"),
    ({"sigmas": [1.0, 0.5, -0.1]}, r"go below 0"),
    ({"sigmas": [5.0, 0.5, 0.0]}, r"start at 5, above this model's largest sigma 1"),
    ({"sigmas": [1.0 - i / 200_000 for i in range(200_001)]}, r"has 200000 steps; the sampler takes at most 10000"),
    ({"sigmas": ["1.0", "0.0"]}, r"not numbers"),
    ({"sigmas": [1.0, True, 0.0]}, r"not numbers"),
    ({"switch_sigma": "0.5"}, r"not numbers"),
    ({"switch_sigma": -1.0}, r"switch_sigma -1.0 is not a finite sigma >= 0"),
    ({"sigmas": [1.0, float("nan"), 0.0]}, r"not a descending schedule of at least 2 finite values"),
])
def test_saved_schedules_are_checked_strictly(comfy, base_dir, flux, change, message):
    path = base_dir / "models" / "glance_schedules" / "bad_inputs" / "strict.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**GOOD, **change}))
    node = comfy.NODE_CLASS_MAPPINGS["GlanceSigmas"]
    with pytest.raises(ValueError, match=r"^preset: 'bad_inputs/strict.json' in models/glance_schedules is not usable: .*"
                                         + message):
        node.execute(flux, "bad_inputs/strict.json", 1, 1, 0.5, "simple")
    path.write_text(json.dumps(GOOD))
    sigmas, switch, _ = node.execute(flux, "bad_inputs/strict.json", 1, 1, 0.5, "simple").args
    assert sigmas.tolist() == pytest.approx(GOOD["sigmas"]) and switch == 0.9 and not math.isnan(switch)
