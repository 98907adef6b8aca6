"""Every flow-matching family the host runs x every Glance node, on small models built from the host's own detector
configs (benchmarks/families.py). Families the host does not have are skipped with the reason.

Observed from outside: the outputs' shapes, the latent that reaches the model (an APPLY_MODEL wrapper in the
model's model_options records the input of every call), that a trained LoRA changes the model's output, and that
the saved files load in the stock LoraLoaderModelOnly and change its output too.
"""
from __future__ import annotations

import pytest
import safetensors
import safetensors.torch
import torch

from benchmarks import families as F
from benchmarks import models as gm

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]

NAMES = [*F.FAMILIES, F.QWEN_EDIT]
SIDE = 8  # latent side of the sampling tests (latent pixels)


class Recorder:
    """Records the shape of the latent every model call receives (the host's APPLY_MODEL wrapper)."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, executor, x, *args, **kwargs):
        self.shapes.append(tuple(x.shape))
        return executor(x, *args, **kwargs)

    def attach(self, patcher):
        import comfy.patcher_extension

        clone = patcher.clone()
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "glance_test_recorder", self)
        return clone


class Case:
    def __init__(self, name: str):
        base = F.QWEN_IMAGE if name == F.QWEN_EDIT else name
        self.name, self.base = name, base
        self.model = F.build(base)
        self.channels, self.dims = F.latent_layout(self.model)
        self.downscale = F.FAMILIES[base].downscale
        self.positive, self.negative = F.conditioning(base, 1), F.conditioning(base, 2)
        if name == F.QWEN_EDIT:  # the reference image's latent rides in the conditioning (the host's ReferenceLatent)
            self.reference = torch.randn((1, 16, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(5))
            self.positive = with_reference(self.positive, self.reference)
        self.latent = F.empty_latent(self.model, SIDE)
        self.trained: dict | None = None

    def layout(self, batch: int, side: int = SIDE) -> tuple[int, ...]:
        """The shape of a latent in this model's own layout."""
        return (batch, self.channels, 1, side, side) if self.dims == 3 else (batch, self.channels, side, side)


def with_reference(conditioning, reference):
    return [[c, {**extras, "reference_latents": [reference]}] for c, extras in conditioning]


@pytest.fixture(scope="module")
def cases(comfy):
    made: dict = {}

    def get(name: str) -> Case:
        if name not in made:
            try:
                made[name] = Case(name)
            except F.Unsupported as e:
                made[name] = e
        if isinstance(made[name], F.Unsupported):
            pytest.skip(str(made[name]))
        return made[name]

    return get


def run(comfy, node_id: str, **inputs) -> tuple:
    with torch.inference_mode():
        return gm.run_node(comfy, node_id, **inputs)


def sample(comfy, case: Case, model, positive=None, steps: int = 2) -> torch.Tensor:
    """The stock KSampler's result with ``model`` (a fixed seed and latent): what a LoRA has to change."""
    with torch.inference_mode():
        out = comfy.NODE_CLASS_MAPPINGS["KSampler"]().sample(
            model, 7, steps, 2.0, "euler", "simple", positive or case.positive, case.negative, case.latent)[0]["samples"]
    return out.float()


def changed(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest change of ``a`` from ``b``, relative to ``b``'s scale (sampling on the CPU is deterministic: an
    unchanged model gives exactly 0)."""
    return float((a - b).abs().max() / (b.abs().max() + 1e-12))


def check_model_inputs(case: Case, recorder: Recorder, side: int = SIDE):
    assert recorder.shapes, "the model was never called"
    for shape in recorder.shapes:
        assert shape[1:] == case.layout(1, side)[1:], f"{case.name}: the model got a {shape} latent, not its own layout"


@pytest.mark.parametrize("name", NAMES)
def test_phase_ksampler(comfy, cases, name):
    case = cases(name)
    from comfy.samplers import calculate_sigmas

    rec_slow, rec_fast = Recorder(), Recorder()
    plain = calculate_sigmas(case.model.get_model_object("model_sampling"), "simple", 4)
    out = run(comfy, "GlancePhaseKSampler", model_slow=rec_slow.attach(case.model), model_fast=rec_fast.attach(case.model),
              positive=case.positive, negative=case.negative, latent_image=case.latent, seed=3, steps=4,
              switch_sigma=float(plain[1] + plain[2]) / 2, cfg_slow=2.0, cfg_fast=1.0, sampler_name="euler",
              scheduler="simple")[0]["samples"]
    assert tuple(out.shape) == case.layout(1) and torch.isfinite(out).all()
    check_model_inputs(case, rec_slow)
    check_model_inputs(case, rec_fast)
    # 2 slow steps at cfg 2 (cond and uncond: 2 images each), 2 fast steps at cfg 1 (1 image each)
    assert sum(s[0] for s in rec_slow.shapes) == 4 and sum(s[0] for s in rec_fast.shapes) == 2


def test_a_4d_empty_latent_reaches_a_video_model_as_one_frame(comfy, cases):
    """The stock EmptySD3LatentImage's 4-D latent: the model gets [B, C, 1, h, w], never a broadcast."""
    case = cases("Wan 2.1")
    rec = Recorder()
    out = run(comfy, "GlancePhaseKSampler", model_slow=rec.attach(case.model), model_fast=rec.attach(case.model),
              positive=case.positive, negative=case.negative, latent_image=gm.empty_latent(SIDE, SIDE), seed=3, steps=2,
              switch_sigma=0.5, cfg_slow=1.0, cfg_fast=1.0, sampler_name="euler", scheduler="simple")[0]["samples"]
    assert tuple(out.shape) == case.layout(1)
    check_model_inputs(case, rec)


@pytest.mark.parametrize("name", list(F.FAMILIES))
def test_family_table_matches_the_host(cases, name):
    """The downscales the matrix expects are the host's own where its latent formats carry them (v0.33)."""
    case = cases(name)
    ratio = getattr(case.model.model.latent_format, "spacial_downscale_ratio", None)
    if ratio is None:
        pytest.skip("this host's latent formats do not carry their downscale")
    assert ratio == case.downscale


@pytest.mark.parametrize("name", NAMES)
def test_glance_sigmas(comfy, cases, name):
    case = cases(name)
    sigmas, switch = run(comfy, "GlanceSigmas", model=case.model, preset="split_from_model_scheduler", steps_slow=2,
                         steps_fast=3, switch_sigma=0.5, scheduler="simple")[:2]
    assert len(sigmas) == 6 and float(sigmas[-1]) == 0.0 and torch.all(sigmas[1:] < sigmas[:-1])
    assert float(sigmas[1]) > switch >= float(sigmas[2])


@pytest.mark.parametrize("name", NAMES)
def test_fit_schedule(comfy, cases, name, base_dir):
    case = cases(name)
    rec = Recorder()
    sigmas, switch = run(comfy, "GlanceFitSchedule", model=rec.attach(case.model), positive=case.positive,
                         negative=case.negative, cfg=2.0, latent_image=case.latent, steps_slow=1, steps_fast=2, fine_steps=6,
                         scheduler="simple", rollouts=1, seed=0, save_name=f"families/{name}")[:2]
    assert len(sigmas) == 4 and float(sigmas[-1]) == 0.0 and torch.all(sigmas[1:] < sigmas[:-1])
    assert float(sigmas[1]) < switch < float(sigmas[0])
    check_model_inputs(case, rec)
    import json
    record = json.loads((base_dir / "models" / "glance_schedules" / "families" / f"{name}.json").read_text())
    assert record["resolution"] == [SIDE * case.downscale] * 2, record["resolution"]


def trained(comfy, case: Case) -> dict:
    """Glance Train LoRA once per family (2 steps on one image): the node's outputs and what reached the model."""
    if case.trained is None:
        rec = Recorder()
        model, file_name, plot = run(
            comfy, "GlanceTrainLoRA", model=rec.attach(case.model), vae=F.make_vae(case.model), image=gm.sample_image(64),
            positive=case.positive, phase="slow", timesteps="", rank=4, alpha=8.0, learning_rate=2e-2, steps=2, seed=0,
            caption_dropout=0.0, gradient_checkpointing=True, save_name=f"families/{case.name}", resolution=64)
        case.trained = dict(model=model, file=file_name, shapes=rec.shapes)
    return case.trained


def untrainable_here(case: Case) -> str | None:
    """Why the host cannot train this family (v0.33 runs Cosmos Predict2's self-attention through comfy_kitchen's
    fused rms_rope_split_half kernel, which has no backward pass); None where it can."""
    try:
        import comfy.quant_ops as ops
    except ImportError:  # v0.3.64: no fused kernels
        return None
    kernel = getattr(getattr(ops, "ck", None), "rms_rope_split_half", None)
    if case.base == "Cosmos Predict2" and kernel is not None:
        return "this host's Cosmos Predict2 attention kernel (comfy_kitchen rms_rope_split_half) has no backward pass"
    return None


@pytest.mark.parametrize("name", NAMES)
def test_train_lora(comfy, cases, name, base_dir):
    case = cases(name)
    if untrainable_here(case):  # a clear error at the first step, nothing saved
        loras = set((base_dir / "models" / "loras").rglob("*.safetensors"))
        with pytest.raises(RuntimeError, match=r"cannot be trained through .*rms_rope_split_half.*Nothing was saved"):
            trained(comfy, case)
        assert set((base_dir / "models" / "loras").rglob("*.safetensors")) == loras
        return
    out = trained(comfy, case)
    shapes = out["shapes"]
    assert shapes and all(len(s) == case.dims + 2 and s[1] == case.channels for s in shapes), shapes
    if case.dims == 3:
        assert all(s[2] == 1 for s in shapes), f"one image is one frame: {shapes}"
    assert changed(sample(comfy, case, out["model"]), sample(comfy, case, case.model)) > 1e-6
    path = base_dir / "models" / "loras" / out["file"]
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["glance.model_class"] == type(case.model.model).__name__
    assert meta["glance.resolution"] == "[64, 64]"


@pytest.mark.parametrize("name", NAMES)
def test_trained_file_loads_in_the_stock_loader_and_glance_loader(comfy, cases, name):
    case = cases(name)
    if reason := untrainable_here(case):
        pytest.skip(reason)
    file_name = trained(comfy, case)["file"]
    base = sample(comfy, case, case.model)
    stock = run(comfy, "LoraLoaderModelOnly", model=case.model, lora_name=file_name, strength_model=1.0)[0]
    assert changed(sample(comfy, case, stock), base) > 1e-6
    glance = run(comfy, "GlanceLoraLoader", model=case.model, slow_lora=file_name, strength_slow=1.0, fast_lora=file_name,
                 strength_fast=1.0)[0]
    assert changed(sample(comfy, case, glance), base) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_distill_experts(comfy, cases, name, base_dir):
    case = cases(name)
    from comfy.samplers import calculate_sigmas

    # Two big steps, each over fine points of the teacher's 6-step schedule (a big step that is one fine step
    # already lands where the teacher does: nothing to learn)
    fine = calculate_sigmas(case.model.get_model_object("model_sampling"), "simple", 6)
    sigmas = torch.tensor([float(fine[0]), float(fine[2]), 0.0])
    rec = Recorder()
    args = dict(model=rec.attach(case.model), positive=case.positive, negative=case.negative, cfg=2.0,
                latent_image=case.latent, sigmas=sigmas, switch_sigma=float(fine[0] + fine[2]) / 2, rank=4,
                learning_rate=2e-2, steps=2, rollouts=1, seed=0, save_name_slow=f"families/{name} slow",
                save_name_fast=f"families/{name} fast", fine_steps=6, scheduler="simple")
    if untrainable_here(case):
        with pytest.raises(RuntimeError, match=r"cannot be trained through .*Nothing was saved"):
            run(comfy, "GlanceDistillExperts", **args)
        assert not list((base_dir / "models" / "loras" / "families").glob(f"{name} *"))
        # Before the teacher's rollouts: the model ran once, the check's own pass (1 image at cfg 1)
        assert rec.shapes == [case.layout(1)], f"the model ran {len(rec.shapes)} times before the error"
        return
    slow, fast, slow_name, fast_name = run(comfy, "GlanceDistillExperts", **args)[:4]
    check_model_inputs(case, rec)
    base = sample(comfy, case, case.model)
    assert changed(sample(comfy, case, slow), base) > 1e-6
    stock = run(comfy, "LoraLoaderModelOnly", model=case.model, lora_name=fast_name, strength_model=1.0)[0]
    assert changed(sample(comfy, case, stock), base) > 1e-6
    with safetensors.safe_open(str(base_dir / "models" / "loras" / slow_name), "pt") as f:
        assert f.metadata()["glance.resolution"] == str([SIDE * case.downscale] * 2)


def test_reference_latent_reaches_the_model(comfy, cases):
    """Qwen-Image with a reference latent (Qwen-Image-Edit's path): the output depends on the reference."""
    case = cases(F.QWEN_EDIT)
    other = with_reference(F.conditioning(F.QWEN_IMAGE, 1), case.reference * -1.0)
    assert changed(sample(comfy, case, case.model), sample(comfy, case, case.model, positive=other)) > 1e-6


def test_unsupported_family_error_names_the_model_class(comfy, pack):
    """A flow model the trainer has no recipe for (Genmo Mochi, built by the host on the meta device: its class and
    sampling only): a clear error naming its class; the sampler-side prompt checks still accept it."""
    from comfy.model_detection import detect_unet_config, model_config_from_unet_config
    from comfy.model_patcher import ModelPatcher

    recipes = pack("training.recipes")
    config = model_config_from_unet_config(
        detect_unet_config({"t5_yproj.weight": torch.empty((3072, 4096), device="meta")}, ""))
    model = ModelPatcher(config.get_model({}, device="meta"), load_device=torch.device("cpu"),
                                             offload_device=torch.device("cpu"))
    assert recipes.is_flow(model.get_model_object("model_sampling"))
    with pytest.raises(ValueError, match=r"no LoRA recipe for this GenmoMochi model .*Glance Fit Schedule work with it"):
        recipes.detect_recipe(model)


def test_cosmos_flow_time_is_the_hosts(cases, pack):
    """Cosmos Predict2 samples x = x0 + sigma noise and its network sees x / (1 + sigma): the flow state
    (1 - t) x0 + t noise at the trainer's t = flow_time(sigma), and sampler_sigma inverts it."""
    recipes = pack("training.recipes")
    ms = cases("Cosmos Predict2").model.get_model_object("model_sampling")
    assert recipes.is_flow(ms)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((1, 16, 1, 4, 4), generator=gen), torch.randn((1, 16, 1, 4, 4), generator=gen)
    for sigma in (0.05, 1.0, 7.5, 80.0):
        s = torch.tensor([sigma])
        t = float(recipes.flow_time(ms, s))
        network_input = ms.calculate_input(s, ms.noise_scaling(s, noise, x0))
        assert torch.allclose(network_input, (1 - t) * x0 + t * noise, atol=1e-5)
        assert abs(recipes.sampler_sigma(ms, t) - sigma) < 1e-4 * sigma



class SigmaRecorder(Recorder):
    """Also records the sigma of every call."""

    def __init__(self):
        super().__init__()
        self.sigmas: list[float] = []

    def __call__(self, executor, x, t, *args, **kwargs):
        self.sigmas.append(float(t.flatten()[0]))
        return super().__call__(executor, x, t, *args, **kwargs)


@pytest.mark.parametrize("preset, boundary", [("wan22_t2v_boundary_0.875", 0.875), ("wan22_i2v_boundary_0.9", 0.9)])
def test_wan22_two_experts_hand_over_at_the_boundary(comfy, cases, preset, boundary):
    """Wan 2.2 A14B: the high-noise expert (model_slow) runs every step that starts above the boundary, the
    low-noise expert (model_fast, another model) every step from it down, in one Glance Phase KSampler run."""
    case = cases("Wan 2.2 A14B")
    low = F.build("Wan 2.2 A14B", seed=1)
    sigmas, switch = run(comfy, "GlanceSigmas", model=case.model, preset=preset, steps_slow=3, steps_fast=4,
                         switch_sigma=0.5, scheduler="simple")[:2]
    assert switch == boundary and len(sigmas) == 8 and float(sigmas[3]) == pytest.approx(boundary)
    assert all(float(s) > boundary for s in sigmas[:3]) and all(float(s) < boundary for s in sigmas[4:])
    high_rec, low_rec = SigmaRecorder(), SigmaRecorder()
    out = run(comfy, "GlancePhaseKSampler", model_slow=high_rec.attach(case.model), model_fast=low_rec.attach(low),
              positive=case.positive, negative=case.negative, latent_image=case.latent, seed=3, steps=7,
              switch_sigma=switch, cfg_slow=1.0, cfg_fast=1.0, sampler_name="euler", scheduler="simple", sigmas=sigmas)
    assert tuple(out[0]["samples"].shape) == case.layout(1)
    assert high_rec.sigmas == pytest.approx([float(s) for s in sigmas[:3]])
    assert low_rec.sigmas == pytest.approx([float(s) for s in sigmas[3:-1]])


def test_wan22_fit_schedule_teacher_is_the_pair(comfy, cases):
    """Glance Fit Schedule with Wan 2.2's low-noise expert as model_low_noise: the teacher's fine steps above the
    handover run on the high-noise expert, the rest on the low-noise one, and the schedule switches there."""
    case = cases("Wan 2.2 A14B")
    low = F.build("Wan 2.2 A14B", seed=1)
    high_rec, low_rec = SigmaRecorder(), SigmaRecorder()
    sigmas, switch = run(comfy, "GlanceFitSchedule", model=high_rec.attach(case.model), positive=case.positive,
                         negative=case.negative, cfg=1.0, latent_image=case.latent, steps_slow=2, steps_fast=2,
                         fine_steps=12, scheduler="simple", rollouts=1, seed=0, save_name="families/wan22 pair",
                         model_low_noise=low_rec.attach(low), handover_sigma=0.875)[:2]
    assert high_rec.sigmas and low_rec.sigmas
    assert min(high_rec.sigmas) > switch >= max(low_rec.sigmas)
    # The teacher ran every point of the 12-step fine schedule (then the fit's own passes and its check, on the same
    # pair, at the same handover).
    from comfy.samplers import calculate_sigmas

    fine = [float(s) for s in calculate_sigmas(case.model.get_model_object("model_sampling"), "simple", 12)[:-1]]
    seen = high_rec.sigmas + low_rec.sigmas
    assert all(any(abs(f - s) < 1e-6 for s in seen) for f in fine)
    assert all(float(s) > switch for s in sigmas[:2]) and all(float(s) < switch for s in sigmas[2:])
    assert float(sigmas[2]) == pytest.approx(min(fine, key=lambda s: abs(s - 0.875)))  # the fine point nearest 0.875
    with pytest.raises(ValueError, match=r"^switch_sigma=0.5 differs from handover_sigma=0.875"):
        run(comfy, "GlanceFitSchedule", model=case.model, positive=case.positive, negative=case.negative, cfg=1.0,
            latent_image=case.latent, steps_slow=2, steps_fast=2, fine_steps=12, scheduler="simple", rollouts=1, seed=0,
            switch_sigma=0.5, model_low_noise=low, handover_sigma=0.875)


def test_edit_pair_training_sees_the_reference(comfy, cases, base_dir):
    """Qwen-Image-Edit training on an edit pair: the reference image's latent rides in the conditioning (the
    host's ReferenceLatent), the target image is what the LoRA learns. The same target with another reference
    trains another LoRA: the reference reaches the model in training."""
    case = cases(F.QWEN_EDIT)
    vae = F.make_vae(case.model)
    with torch.inference_mode():
        reference = vae.encode(gm.sample_image(64).flip(2))  # the "before" image: the target mirrored
    if reference.ndim == 4:  # v0.3.64's tiny image VAE: one frame, as Qwen-Image's own VAE encodes an image
        reference = reference.unsqueeze(2)
    files = []
    for n, ref in enumerate((reference, -reference)):
        positive = with_reference(F.conditioning(F.QWEN_IMAGE, 1), ref)
        files.append(run(comfy, "GlanceTrainLoRA", model=case.model, vae=vae, image=gm.sample_image(64), positive=positive,
                         phase="slow", timesteps="", rank=4, alpha=8.0, learning_rate=2e-2, steps=2, seed=0,
                         caption_dropout=0.0, gradient_checkpointing=True, save_name=f"families/edit {n}",
                         resolution=64)[1])
    a, b = (safetensors.torch.load_file(str(base_dir / "models" / "loras" / f)) for f in files)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a if "lora_up" in k) > 1e-6


def pair_args(case: Case, high, low, sigmas, switch: float, handover: float, name: str) -> dict:
    return dict(model=high, positive=case.positive, negative=case.negative, cfg=2.0, latent_image=case.latent,
                sigmas=sigmas, switch_sigma=switch, rank=4, learning_rate=2e-2, steps=2, rollouts=1, seed=0,
                save_name_slow=f"families/{name} slow", save_name_fast=f"families/{name} fast", fine_steps=6,
                scheduler="simple", model_low_noise=low, handover_sigma=handover)


def test_wan22_distill_experts_on_the_pair(comfy, cases, base_dir):
    """Glance Distill Experts with Wan 2.2's low-noise expert as model_low_noise: the teacher's fine steps above the
    handover run on the high-noise model, the rest on the low-noise one; the slow expert is a LoRA of the high-noise
    model (trained above the switch), the fast one of the low-noise model; each changes its own model's output, and
    both files load in the stock loader on their own model."""
    from comfy.samplers import calculate_sigmas

    case = cases("Wan 2.2 A14B")
    low = F.build("Wan 2.2 A14B", seed=1)
    fine = [float(s) for s in calculate_sigmas(case.model.get_model_object("model_sampling"), "simple", 6)]
    sigmas = torch.tensor([fine[0], fine[2], 0.0])
    handover = (fine[1] + fine[2]) / 2  # 2 fine steps on the high-noise model, 4 on the low-noise one
    high_rec, low_rec = SigmaRecorder(), SigmaRecorder()
    slow, fast, slow_name, fast_name = run(comfy, "GlanceDistillExperts", **pair_args(
        case, high_rec.attach(case.model), low_rec.attach(low), sigmas, handover, handover, "wan22 pair"))[:4]
    assert high_rec.sigmas and low_rec.sigmas
    assert min(high_rec.sigmas) > handover >= max(low_rec.sigmas)
    seen = high_rec.sigmas + low_rec.sigmas
    assert all(any(abs(f - s) < 1e-6 for s in seen) for f in fine[:-1])  # the teacher ran every fine point
    for model, base, file_name, expert in ((slow, case.model, slow_name, "slow"), (fast, low, fast_name, "fast")):
        reference = sample(comfy, case, base)
        assert changed(sample(comfy, case, model), reference) > 1e-6, expert
        stock = run(comfy, "LoraLoaderModelOnly", model=base, lora_name=file_name, strength_model=1.0)[0]
        assert changed(sample(comfy, case, stock), reference) > 1e-6, expert
        with safetensors.safe_open(str(base_dir / "models" / "loras" / file_name), "pt") as f:
            meta = f.metadata()
        assert meta["glance.phase"] == expert and meta["glance.model_class"] == "WAN21"
        assert meta["glance.trained_on"].startswith("model (the high" if expert == "slow" else "model_low_noise (the low")
        assert float(meta["glance.handover_sigma"]) == pytest.approx(handover)


def test_wan22_distill_pair_bad_inputs_stop_before_the_teacher(comfy, cases, base_dir):
    """A switch that does not split the schedule where the pair hands over, and a second model of another family,
    are refused before any model pass."""
    from comfy.samplers import calculate_sigmas

    case = cases("Wan 2.2 A14B")
    low = F.build("Wan 2.2 A14B", seed=1)
    fine = [float(s) for s in calculate_sigmas(case.model.get_model_object("model_sampling"), "simple", 6)]
    sigmas = torch.tensor([fine[0], fine[2], fine[4], 0.0])
    rec = Recorder()
    with pytest.raises(ValueError, match=r"^switch_sigma=\S+ differs from handover_sigma=\S+: "):
        run(comfy, "GlanceDistillExperts", **pair_args(case, rec.attach(case.model), rec.attach(low), sigmas,
                                                         (fine[0] + fine[2]) / 2, fine[4], "wan22 bad switch"))
    try:
        other = F.build("Cosmos Predict2")  # 16 channels, 3-D latents, as Wan's
    except F.Unsupported as e:
        pytest.skip(str(e))
    with pytest.raises(ValueError, match=r"^model_low_noise: a CosmosPredict2 .* but model is a WAN21 .*one family"):
        run(comfy, "GlanceDistillExperts", **pair_args(case, rec.attach(case.model), rec.attach(other), sigmas,
                                                         (fine[0] + fine[2]) / 2, (fine[0] + fine[2]) / 2, "wan22 other"))
    assert rec.shapes == []
    assert not list((base_dir / "models" / "loras" / "families").glob("wan22 bad*"))


def test_pair_switch_rule(pack):
    """The switch of a pair's schedule: where handover_sigma itself splits the steps, or with the point nearest it as
    the first fast step (where Glance Fit Schedule with the pair puts its switch_sigma); anything else is refused."""
    switch = pack("schedules.switch")
    sigmas = [1.0, 0.95, 0.88, 0.6, 0.0]
    for ok in (0.875, 0.7, (0.95 + 0.88) / 2):
        assert switch.pair_switch_problem(sigmas, ok, 0.875) is None, ok
    for bad in (0.5, 0.97):
        assert switch.pair_switch_problem(sigmas, bad, 0.875).startswith(f"switch_sigma={bad:g} differs from "
                                                                         "handover_sigma=0.875: ")


@pytest.mark.parametrize("reference, problem", [
    (torch.randn(1, 16, 8, 8), r"has shape \(1, 16, 8, 8\).*\[batch, 16, frames, height, width\]"),  # an image VAE's 4-D latent
    (torch.randn(1, 4, 1, 8, 8), r"has 4 channels.*16"),  # another model's VAE (SD1.x)
    (torch.full((1, 16, 1, 8, 8), float("nan")), r"NaN or infinite"),
])
def test_edit_pair_with_a_reference_of_another_layout_is_refused_before_training(comfy, cases, base_dir, reference, problem):
    """A reference latent the model cannot read (another VAE's layout or channels, a broken encode): an error that
    names the input (positive) and the fix, before anything trains; nothing is saved."""
    case = cases(F.QWEN_EDIT)
    positive = with_reference(F.conditioning(F.QWEN_IMAGE, 1), reference)
    loras = set((base_dir / "models" / "loras").rglob("*.safetensors"))
    calls = Recorder()
    with pytest.raises(ValueError, match=r"^positive: reference latent 1 .*" + problem + r".*VAE"):
        run(comfy, "GlanceTrainLoRA", model=calls.attach(case.model), vae=F.make_vae(case.model), image=gm.sample_image(64),
            positive=positive, phase="slow", timesteps="", rank=4, alpha=8.0, learning_rate=2e-2, steps=2, seed=0,
            caption_dropout=0.0, gradient_checkpointing=True, save_name="families/edit bad reference", resolution=64)
    assert calls.shapes == [], "the model ran before the reference was checked"
    assert set((base_dir / "models" / "loras").rglob("*.safetensors")) == loras
