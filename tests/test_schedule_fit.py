"""GlanceFitSchedule: the path search, a fit on the demo kit judged by sampling, the saved preset, bad inputs."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from benchmarks import models as gm
from cli import model_kit

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]

CFG = 3.0


# --- a fit on the demo kit ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit


def fit(kit, **overrides):
    args = dict(model=kit["model"], positive=kit["conds"][kit["train"]], negative=kit["negative"], cfg=CFG, latent_image=kit["latent"],
                steps_slow=3, steps_fast=3, fine_steps=30, scheduler="simple", rollouts=4, seed=0, switch_sigma=0.0,
                save_name="test/fit")
    args.update(overrides)
    with torch.inference_mode():
        return kit["n"]["GlanceFitSchedule"].execute(**args)


def end_error(kit, sigmas, fine_steps: int, prompt: str, seed: int, seeds: int = 6) -> float:
    """MSE of the schedule's samples (the host's SamplerCustom, euler) to the fine-step samples (KSampler), new seeds."""
    n = kit["n"]
    latent = {"samples": torch.zeros((seeds, *kit["latent"]["samples"].shape[1:]))}
    positive = kit["conds"][prompt]
    with torch.inference_mode():
        ref = n["KSampler"]().sample(kit["model"], seed, fine_steps, CFG, "euler", "simple", positive,
                                     kit["negative"], latent)[0]["samples"]
        sampler = gm.run_node(kit["nodes"], "KSamplerSelect", sampler_name="euler")[0]
        out = gm.run_node(kit["nodes"], "SamplerCustom", model=kit["model"], add_noise=True, noise_seed=seed,
                          cfg=CFG, positive=positive, negative=kit["negative"], sampler=sampler, sigmas=sigmas,
                          latent_image=latent)[0]
    return float(((out["samples"] - ref) ** 2).mean())


def test_fitted_schedule_lands_closer_to_the_fine_run_than_the_plain_one(kit, pack, base_dir, caplog):
    caplog.set_level(logging.INFO, logger="comfyui-glance")
    counted = []

    def count(executor, x, *args, **kwargs):
        counted.append(int(x.shape[0]))
        return executor(x, *args, **kwargs)

    import comfy.patcher_extension as pe
    import comfy.samplers

    model = kit["model"].clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "glance-test-count", count)
    sigmas, switch, plot = fit({**kit, "model": model}).args
    assert len(sigmas) == 7 and float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert float(sigmas[3]) < switch < float(sigmas[2])  # exactly 3 slow steps start above the switch
    fine = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 30)
    assert all(torch.isclose(fine, s).any() for s in sigmas), "every fitted point is a point of the fine schedule"
    assert plot.shape == (1, 320, 512, 3)
    assert counted[:30] == [4 * 2] * 30  # the teacher: 4 rollouts x 30 steps, cond + uncond, as one batch (the CPU holds it)
    # then the path on the sampler's own states (the 4 rollouts' states at each point it can be at after each step:
    # within 4 grid points of the teacher-local path, so at most 9 per step after the first) and the check: the
    # first rollout again at 15 steps (half the teacher's), and the sampler on the fitted and the plain 6 steps
    check = 1 * (15 + 6 + 6)
    assert set(counted[30:-check]) == {4 * 2} and 1 + 5 * 3 <= len(counted[30:-check]) <= 1 + 5 * 9
    assert counted[-check:] == [2] * check
    assert f"{sum(counted)} model passes" in caplog.text

    plain = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 6)
    assert not torch.allclose(plain, sigmas)
    for seed, prompt in ((503, kit["train"]), (505, kit["held_out"])):  # the fitted prompt, and one it never saw
        fitted_error, plain_error = end_error(kit, sigmas, 30, prompt, seed), end_error(kit, plain, 30, prompt, seed)
        print(f"{prompt!r}: end error fitted {fitted_error:.5f}, plain {plain_error:.5f}")
        assert fitted_error < 0.8 * plain_error, (prompt, fitted_error, plain_error)


def test_saved_schedule_is_a_glance_sigmas_preset(kit, comfy, base_dir):
    sigmas, switch, _ = fit(kit, save_name="test/preset_me", steps_slow=2, steps_fast=2, fine_steps=12, rollouts=2).args
    path = base_dir / "models" / "glance_schedules" / "test" / "preset_me.json"
    record = json.loads(path.read_text())
    assert record["format"] == "glance-schedule" and record["sigmas"] == [float(s) for s in sigmas]
    assert record["model"]["model_class"] == "SD3" and record["model"]["fingerprint"]
    assert record["resolution"] == [model_kit.IMAGE_SIZE] * 2 and record["cfg"] == CFG
    # the teacher (2 rollouts x 12 steps), the path on the sampler's own states, and the check (the first rollout
    # again at 6 steps, the fitted and the plain 4 steps), cond and uncond
    assert record["fit_error"] >= 0 and record["model_passes"] > 2 * 12 * 2 + 1 * (6 + 4 + 4) * 2
    assert record["sampler"] == "euler" and record["teacher"]["steps"] == 12 and record["teacher"]["check_rollouts"] == 1
    node = comfy.NODE_CLASS_MAPPINGS["GlanceSigmas"]
    options = next(i for i in node.define_schema().inputs if i.id == "preset").options
    assert "test/preset_me.json" in options and options[:3] == ["qwen_image_glance", "flux_dev_glance", "split_from_model_scheduler"]
    assert node.validate_inputs(preset="test/preset_me.json") is True
    got, got_switch, plot = node.execute(kit["model"], "test/preset_me.json", 1, 1, 0.5, "simple").args
    assert torch.equal(got, sigmas) and got_switch == switch and plot.shape[0] == 1
    # A later fit under the same name replaces the file, whole.
    again, _, _ = fit(kit, save_name="test/preset_me", steps_slow=1, steps_fast=2, fine_steps=12, rollouts=2).args
    assert json.loads(path.read_text())["sigmas"] == [float(s) for s in again] and len(again) == 4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".glance-")]


def test_automatic_name_says_model_size_cfg_and_steps(kit, base_dir):
    fit(kit, save_name="", steps_slow=1, steps_fast=1, fine_steps=6, rollouts=1)
    names = [p.name for p in (base_dir / "models" / "glance_schedules").glob("SD3_*_64x64_cfg3_1+1.json")]
    assert len(names) == 1, names


def test_glance_sigmas_refuses_unknown_or_broken_saved_schedules(comfy, kit, base_dir):
    node = comfy.NODE_CLASS_MAPPINGS["GlanceSigmas"]
    assert "preset: 'nope.json'" in node.validate_inputs(preset="nope.json")
    broken = base_dir / "models" / "glance_schedules" / "test" / "broken.json"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text(json.dumps({"format": "glance-schedule", "sigmas": [0.2, 0.5, 0.0], "switch_sigma": 0.3}))
    with pytest.raises(ValueError, match=r"^preset: 'test/broken.json'.*not a descending schedule"):
        node.execute(kit["model"], "test/broken.json", 1, 1, 0.5, "simple")
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"^preset: 'test/broken.json' cannot be read"):
        node.execute(kit["model"], "test/broken.json", 1, 1, 0.5, "simple")


def test_saved_schedule_for_another_model_warns(comfy, kit, caplog):
    fit(kit, save_name="test/for_the_kit", steps_slow=1, steps_fast=1, fine_steps=6, rollouts=1)
    caplog.set_level(logging.WARNING, logger="comfyui-glance")
    comfy.NODE_CLASS_MAPPINGS["GlanceSigmas"].execute(gm.make_flux(), "test/for_the_kit.json", 1, 1, 0.5, "simple")
    assert "was fitted to another model" in caplog.text and "model_class 'SD3' vs 'Flux'" in caplog.text


@pytest.mark.parametrize("overrides, message", [
    (dict(steps_slow=20, steps_fast=20, fine_steps=30), r"^steps_slow \+ steps_fast = 40 is more than fine_steps=30"),
    (dict(rollouts=0), r"^rollouts=0"),
    (dict(cfg=float("nan")), r"^cfg=nan"),
    (dict(switch_sigma=float("nan")), r"^switch_sigma=nan"),
    (dict(switch_sigma=5.0), r"^switch_sigma=5 is outside this model's sigma range"),
    (dict(switch_sigma=0.99, steps_slow=3, fine_steps=30), r"^switch_sigma=0.99: its nearest fine point"),
    (dict(save_name="../escape"), r"^save_name: '../escape' contains '..'"),
    (dict(save_name="/tmp/glance_abs"), r"^save_name: '/tmp/glance_abs' is an absolute path"),
    (dict(latent_image=torch.zeros((1, 16, 8, 8))), r"^latent_image: expected a LATENT"),
    (dict(latent_image={"samples": torch.ones((1, 4, 8, 8))}), r"^latent_image has 4 channels"),
    (dict(positive=[[torch.zeros((1, 8, 64)), {}]]), r"^positive: .*width 64"),
    (dict(negative="a string"), r"^negative: expected CONDITIONING"),
    (dict(scheduler="no_such"), r"^scheduler='no_such' is not one of"),
])
def test_bad_inputs_are_refused_before_any_sampling(kit, base_dir, overrides, message):
    before = set((base_dir / "models").rglob("*.json"))
    with pytest.raises(ValueError, match=message):
        fit(kit, **overrides)
    assert set((base_dir / "models").rglob("*.json")) == before


def test_interrupt_stops_the_fit_and_saves_nothing(kit, base_dir):
    """The user presses Cancel during the 5th model call (of 2 rollouts x 10 steps): the fit stops at that step."""
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    calls = []

    def cancel_at_fifth(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            mm.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    model = kit["model"].clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "glance-test-cancel", cancel_at_fifth)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            fit({**kit, "model": model}, save_name="test/interrupted", rollouts=2, fine_steps=10)
    finally:
        mm.interrupt_current_processing(False)
    assert len(calls) == 5
    assert not (base_dir / "models" / "glance_schedules" / "test" / "interrupted.json").exists()


def test_progress_runs_over_every_rollout_step(kit):
    import comfy.utils

    seen = []
    before = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, *a, **k: seen.append((value, total)))
    try:
        fit(kit, save_name="test/progress", rollouts=3, fine_steps=8, steps_slow=1, steps_fast=1)
    finally:
        comfy.utils.set_progress_bar_global_hook(before)
    assert seen[0][1] == 24 and seen[-1] == (24, 24) and [v for v, _ in seen] == sorted(v for v, _ in seen)


def test_batched_rollouts_are_what_ksampler_samples_for_each_seed(kit, pack):
    """A prompt's rollouts run as one batch; each is still the stock KSampler's Euler run for its own seed."""
    import comfy.samplers

    teacher = pack("sampling.teacher")
    model, positive = kit["model"], kit["conds"][kit["train"]]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 12)
    with torch.inference_mode():
        batch = teacher.rollout_batch(model, positive, kit["negative"], CFG, kit["latent"]["samples"], sigmas, [7, 8, 9])
        for r in batch:
            want = kit["n"]["KSampler"]().sample(model, r.seed, 12, CFG, "euler", "simple", positive, kit["negative"],
                                                 kit["latent"], denoise=1.0)[0]["samples"]
            assert r.x.shape == (13, *kit["latent"]["samples"].shape[1:]) and r.velocity.shape[0] == 12
            want = model.model.process_latent_in(want)  # rollouts record the sampler's own latent space
            assert torch.allclose(r.x[-1:], want, atol=1e-4), (r.seed, float((r.x[-1:] - want).abs().max()))
        assert not torch.allclose(batch[0].x[-1], batch[1].x[-1])



def test_rollout_batches_follow_the_hosts_memory_estimate(kit, pack):
    """All of a prompt's rollouts in one batch where the device holds them; one at a time where the host's own
    estimate of a sampling batch says even two would not fit beside the model."""
    import comfy.model_management as mm

    teacher = pack("sampling.teacher")
    model = kit["model"]
    assert teacher.batch_size(model, kit["latent"]["samples"], 8) == 8
    room = mm.get_total_memory(model.load_device) - model.model_size() - mm.extra_reserved_memory()
    side = 16
    while model.model.memory_required([2, 16, side, side]) * 2 <= room:  # one image's estimate above half the room
        side *= 2
    huge = torch.zeros((1, 16, side, side), device="meta")  # only its shape is read
    assert teacher.batch_size(model, huge, 8) == 1
    assert teacher.batch_size(model, kit["latent"]["samples"], 1) == 1
