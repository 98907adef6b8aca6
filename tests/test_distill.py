"""GlanceDistillExperts on the demo kit: the experts land nearer the fine run, their files, bad inputs, interrupts."""
from __future__ import annotations

import pytest
import safetensors
import safetensors.torch
import torch

from benchmarks import models as gm

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]

CFG = 3.0
FINE = 30


@pytest.fixture(scope="module")
def kit(demo_kit):
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(demo_kit["model"].get_model_object("model_sampling"), "simple", FINE)[[0, 6, 12, 18, 30]]
    switch = (float(sigmas[1]) + float(sigmas[2])) / 2  # 2 slow + 2 fast steps, every point on the teacher's grid
    return {**demo_kit, "positive": demo_kit["conds"][demo_kit["train"]], "sigmas": sigmas, "switch": switch}


def distill(kit, **overrides):
    args = dict(model=kit["model"], positive=kit["positive"], negative=kit["negative"], cfg=CFG, latent_image=kit["latent"],
                sigmas=kit["sigmas"], switch_sigma=kit["switch"], rank=8, learning_rate=1e-3, steps=40, rollouts=4, seed=0,
                save_name_slow="test/distill_slow", save_name_fast="test/distill_fast", cfg_fast=-1.0, fine_steps=FINE,
                scheduler="simple", gradient_checkpointing=False)
    args.update(overrides)
    with torch.inference_mode():
        return kit["n"]["GlanceDistillExperts"].execute(**args).args


def phase_samples(kit, model_slow, model_fast, seeds=6, seed=900):
    latent = {"samples": torch.zeros((seeds, *kit["latent"]["samples"].shape[1:]))}
    with torch.inference_mode():
        return kit["n"]["GlancePhaseKSampler"].execute(
            model_slow=model_slow, model_fast=model_fast, positive=kit["positive"], negative=kit["negative"],
            latent_image=latent, seed=seed, steps=1, switch_sigma=kit["switch"], cfg_slow=CFG, cfg_fast=CFG,
            sampler_name="euler", scheduler="simple", sigmas=kit["sigmas"]).args[0]["samples"]


def fine_samples(kit, seeds=6, seed=900):
    latent = {"samples": torch.zeros((seeds, *kit["latent"]["samples"].shape[1:]))}
    with torch.inference_mode():
        return kit["n"]["KSampler"]().sample(kit["model"], seed, FINE, CFG, "euler", "simple", kit["positive"],
                                             kit["negative"], latent)[0]["samples"]


@pytest.fixture(scope="module")
def distilled(kit):
    dm = kit["model"].model.diffusion_model
    weights = {k: v.clone() for k, v in dm.state_dict().items()}
    modules = [n for n, _ in dm.named_modules()]
    grad = {n: p.requires_grad for n, p in dm.named_parameters()}
    import comfy.model_management as mm

    mm.unload_all_models()  # no sampling clone's forward-expert hooks on the model while the hooks are counted
    out = distill(kit, save_name_slow="test/main_slow", save_name_fast="test/main_fast")
    return dict(out=out, weights=weights, modules=modules, grad=grad, hooked=hooked_layers(dm))


def hooked_layers(dm):
    return [n for n, m in dm.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def test_experts_land_nearer_the_fine_run_than_the_base(kit, distilled):
    """On the training prompt, new seeds: the 4-step samples of the experts are closer to the 30-step ones."""
    model_slow, model_fast, *_ = distilled["out"]
    ref = fine_samples(kit)
    base = float(((phase_samples(kit, kit["model"], kit["model"]) - ref) ** 2).mean())
    experts = float(((phase_samples(kit, model_slow, model_fast) - ref) ** 2).mean())
    print(f"4-step MSE to the {FINE}-step samples: base {base:.5f}, distilled experts {experts:.5f}")
    assert experts < 0.7 * base, (base, experts)


def test_base_model_is_untouched(kit, distilled):
    dm = kit["model"].model.diffusion_model
    assert [n for n, _ in dm.named_modules()] == distilled["modules"]
    assert distilled["hooked"] == [], "hooks left on the model after distillation"
    after = dm.state_dict()
    assert all(torch.equal(after[k], distilled["weights"][k]) for k in distilled["weights"])
    assert {n: p.requires_grad for n, p in dm.named_parameters()} == distilled["grad"]


def test_files_load_in_glance_lora_loader_as_the_node_outputs(kit, distilled, base_dir):
    model_slow, model_fast, slow_name, fast_name, plot = distilled["out"]
    assert (slow_name, fast_name) == ("test/main_slow.safetensors", "test/main_fast.safetensors")
    assert plot.shape == (1, 640, 512, 3)
    loras = base_dir / "models" / "loras"
    for name, phase in ((slow_name, "slow"), (fast_name, "fast")):
        with safetensors.safe_open(str(loras / name), "pt") as f:
            meta, keys = f.metadata(), list(f.keys())
        assert meta["glance.phase"] == phase and meta["glance.objective"].startswith("distillation:")
        assert meta["glance.base_model"] == "SD3" and meta["glance.rank"] == "8" and meta["glance.steps"] == "40"
        assert float(meta["glance.alpha"]) == 8 * 64 / 16  # the SD3 recipe's alpha/rank scale
        assert meta["glance.teacher_steps"] == str(FINE) and meta["glance.rollouts"] == "4"
        assert keys and all(k.startswith("diffusion_model.") for k in keys)
        sigmas = [float(s) for s in meta["glance.sigmas"].strip("[]").split(",")]
        assert all(s > kit["switch"] for s in sigmas) == (phase == "slow")
    with torch.inference_mode():
        loaded_slow, loaded_fast = kit["n"]["GlanceLoraLoader"].execute(kit["model"], slow_name, 1.0, fast_name, 1.0).args
    assert torch.equal(phase_samples(kit, loaded_slow, loaded_fast), phase_samples(kit, model_slow, model_fast))
    # Each expert is its own: slow-only and fast-only differ from both and from the base.
    with torch.inference_mode():
        only_slow = kit["n"]["GlanceLoraLoader"].execute(kit["model"], slow_name, 1.0, "None", 1.0).args
    assert not torch.equal(phase_samples(kit, *only_slow), phase_samples(kit, model_slow, model_fast))


def test_existing_files_are_not_overwritten(kit, distilled, base_dir):
    path = base_dir / "models" / "loras" / "test" / "main_fast.safetensors"
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="^save_name_fast: 'test/main_fast.safetensors' already exists"):
        distill(kit, save_name_slow="test/other_slow", save_name_fast="test/main_fast", steps=1)
    assert path.read_bytes() == before
    assert not (base_dir / "models" / "loras" / "test" / "other_slow.safetensors").exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(save_name_fast="test/distill_slow"), r"^save_name_fast: .*different names"),
    (dict(save_name_slow="../escape"), r"^save_name_slow: '../escape' contains '..'"),
    (dict(switch_sigma=0.01), r"^switch_sigma=0.01 leaves no fast step"),
    (dict(switch_sigma=2.0), r"^switch_sigma=2 leaves no slow step"),
    (dict(switch_sigma=float("nan")), r"^switch_sigma=nan"),
    (dict(sigmas=torch.tensor([1.0, 0.5, 0.2])), r"^sigmas: expected a descending schedule .* ends at 0"),
    (dict(sigmas=torch.tensor([1.0, 0.6, 0.8, 0.0])), r"^sigmas: expected a descending schedule"),
    (dict(rank=0), r"^rank=0"),
    (dict(learning_rate=0.0), r"^learning_rate=0.0"),
    (dict(rollouts=0), r"^rollouts=0"),
    (dict(cfg_fast=float("nan")), r"^cfg_fast=nan"),
    (dict(positive=[[torch.zeros((1, 8, 64)), {}]]), r"^positive: .*width 64"),
])
def test_bad_inputs_are_refused_before_training(kit, base_dir, overrides, message):
    before = set((base_dir / "models").rglob("*.safetensors"))
    with pytest.raises(ValueError, match=message):
        distill(kit, **overrides)
    assert set((base_dir / "models").rglob("*.safetensors")) == before


def test_non_flow_model_is_refused(kit):
    import comfy.model_sampling

    model = gm.make_flux()
    model.add_object_patch("model_sampling", comfy.model_sampling.ModelSamplingDiscrete())
    with pytest.raises(ValueError, match="^model:.*flow-matching"):
        distill(kit, model=model)


def test_interrupt_during_training_leaves_the_model_clean(kit, base_dir):
    """Cancel after the teacher, during the slow expert's training: nothing saved, no adapter, weights unchanged."""
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    calls = []
    teacher_calls = 1 + 2 * FINE  # the trainability check's one call, then 2 rollouts x FINE steps, one call each
    # (cond and uncond batched)

    def cancel_in_training(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == teacher_calls + 3:
            mm.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    mm.unload_all_models()  # no sampling clone's forward-expert hooks on the model while the hooks are counted
    model = kit["model"].clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "glance-test-cancel", cancel_in_training)
    dm = model.model.diffusion_model
    modules = [n for n, _ in dm.named_modules()]
    weights = {k: v.clone() for k, v in dm.state_dict().items()}
    grad = {n: p.requires_grad for n, p in dm.named_parameters()}
    try:
        with pytest.raises(mm.InterruptProcessingException):
            distill(kit, model=model, rollouts=2, steps=20, save_name_slow="test/cut_slow", save_name_fast="test/cut_fast")
    finally:
        mm.interrupt_current_processing(False)
    assert teacher_calls + 3 <= len(calls) <= teacher_calls + 4, len(calls)
    assert [n for n, _ in dm.named_modules()] == modules
    assert hooked_layers(dm) == [], "hooks left on the model"
    assert {n: p.requires_grad for n, p in dm.named_parameters()} == grad
    assert all(torch.equal(dm.state_dict()[k], weights[k]) for k in weights)
    assert not list((base_dir / "models" / "loras" / "test").glob("cut_*"))


def test_a_model_that_cannot_be_trained_through_is_refused_before_the_teacher(kit, base_dir):
    """A model that runs an operation with no backward (as v0.33 runs Cosmos Predict2's attention through a fused
    kernel): the error comes from one model pass, before the teacher's rollouts; nothing saved."""
    import comfy.patcher_extension as pe

    @torch.library.custom_op("glance_test::no_backward", mutates_args=())
    def no_backward(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    calls = []

    def opaque(executor, *args, **kwargs):
        calls.append(1)
        out = executor(*args, **kwargs)
        return no_backward(out) if out.requires_grad else out

    model = kit["model"].clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "glance-test-no-backward", opaque)
    with pytest.raises(RuntimeError, match=r"^model: .*cannot be trained through .*no autograd formula.*Nothing was saved"):
        distill(kit, model=model, save_name_slow="test/opaque_slow", save_name_fast="test/opaque_fast")
    assert len(calls) == 1, f"the model ran {len(calls)} times before the error (the teacher's rollouts ran)"
    assert not list((base_dir / "models" / "loras" / "test").glob("opaque_*"))


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_fit_then_distill_run_on_flux_and_qwen(comfy, base_dir, kind):
    """FLUX (blocks that update their inputs in place: checkpointing forced) and Qwen-Image (5-D latents)."""
    model = gm.make_flux() if kind == "flux" else gm.make_qwen()
    n = comfy.NODE_CLASS_MAPPINGS
    positive, negative = gm.conditioning(kind, 1), gm.conditioning(kind, 2)
    latent = gm.empty_latent(8, 8)
    with torch.inference_mode():
        sigmas, switch, _ = n["GlanceFitSchedule"].execute(
            model=model, positive=positive, negative=negative, cfg=2.0, latent_image=latent, steps_slow=2, steps_fast=2,
            fine_steps=8, scheduler="simple", rollouts=1, seed=0, save_name=f"test/{kind}").args
        slow, fast, slow_name, fast_name, _ = n["GlanceDistillExperts"].execute(
            model=model, positive=positive, negative=negative, cfg=2.0, latent_image=latent, sigmas=sigmas,
            switch_sigma=switch, rank=4, learning_rate=1e-3, steps=2, rollouts=1, seed=0,
            save_name_slow=f"test/{kind}_slow", save_name_fast=f"test/{kind}_fast", fine_steps=8,
            gradient_checkpointing=False).args
        out = n["GlancePhaseKSampler"].execute(
            model_slow=slow, model_fast=fast, positive=positive, negative=negative, latent_image=latent, seed=0, steps=1,
            switch_sigma=switch, cfg_slow=2.0, cfg_fast=2.0, sampler_name="euler", scheduler="simple",
            sigmas=sigmas).args[0]["samples"]
    assert torch.isfinite(out).all() and (out.ndim == 5) == (kind == "qwen")
    meta = safetensors.safe_open(str(base_dir / "models" / "loras" / slow_name), "pt").metadata()
    assert meta["glance.base_model"] == {"flux": "FLUX.1", "qwen": "Qwen-Image"}[kind]


class InputRecorder:
    """Every latent the model is called on, one row per image, with its sigma (the host's APPLY_MODEL wrapper)."""

    def __init__(self):
        self.calls: list[tuple[float, torch.Tensor]] = []

    def __call__(self, executor, x, t, *args, **kwargs):
        self.calls += [(float(t[b]), x[b].detach().clone()) for b in range(x.shape[0])]
        return executor(x, t, *args, **kwargs)

    def attach(self, patcher):
        import comfy.patcher_extension

        clone = patcher.clone()
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "glance-test-inputs", self)
        return clone

    def at(self, sigma: float) -> list[torch.Tensor]:
        return [x for s, x in self.calls if abs(s - sigma) < 1e-6]


def host_states(kit, sampler: str, sigmas, seed: int, sigma: float) -> torch.Tensor:
    """The state the host's own ``sampler`` reaches at ``sigma`` on ``sigmas`` (base model, the noise of ``seed``)."""
    rec = InputRecorder()
    with torch.inference_mode():
        select = kit["n"]["KSamplerSelect"]().get_sampler(sampler)[0]
        kit["n"]["SamplerCustom"]().sample(rec.attach(kit["model"]), True, seed, CFG, kit["positive"], kit["negative"],
                                           select, sigmas, {"samples": torch.zeros_like(kit["latent"]["samples"])})
    return rec.at(sigma)[0]


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler"])
def test_experts_train_on_the_states_of_their_sampler(kit, base_dir, sampler):
    """sampler_name reaches training: the model is trained at the states the host's own sampler visits from each
    rollout's noise (3 slow steps: the third starts where dpmpp_2m's second-order step went, not Euler's and not
    the fine run's), and the files say which sampler."""
    sigmas = kit["sigmas"]
    switch = (float(sigmas[2]) + float(sigmas[3])) / 2  # 3 slow steps + 1 fast
    rec = InputRecorder()
    out = distill(kit, model=rec.attach(kit["model"]), sigmas=sigmas, switch_sigma=switch, rollouts=2, steps=2,
                  sampler_name=sampler, save_name_slow=f"test/states_{sampler}_slow",
                  save_name_fast=f"test/states_{sampler}_fast")
    seen = rec.at(float(sigmas[2]))
    other = "euler" if sampler == "dpmpp_2m" else "dpmpp_2m"
    for r in range(2):
        mine, theirs = (host_states(kit, s, sigmas, r, float(sigmas[2])) for s in (sampler, other))
        nearest = min(float((x - mine).abs().max()) for x in seen)
        assert nearest < 1e-4, (r, nearest)
        assert float((mine - theirs).abs().max()) > 100 * max(nearest, 1e-6)
        assert min(float((x - theirs).abs().max()) for x in seen) > 100 * max(nearest, 1e-6)
    meta = safetensors.safe_open(str(base_dir / "models" / "loras" / out[2]), "pt").metadata()
    assert meta["glance.sampler"] == sampler and "from its own state" in meta["glance.objective"]


def test_unmodelled_sampler_is_refused_before_any_work(kit, base_dir):
    rec = InputRecorder()
    before = set((base_dir / "models").rglob("*.safetensors"))
    with pytest.raises(ValueError, match=r"^sampler_name='euler_ancestral': .*euler, dpmpp_2m, res_multistep"):
        distill(kit, model=rec.attach(kit["model"]), sampler_name="euler_ancestral")
    assert rec.calls == [] and set((base_dir / "models").rglob("*.safetensors")) == before
    problem = kit["n"]["GlanceDistillExperts"].validate_inputs(switch_sigma=0.5, sampler_name="uni_pc")
    assert problem.startswith("sampler_name='uni_pc'")
