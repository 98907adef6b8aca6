"""GlanceTrainLoRA on the paths a GPU takes, emulated on CPU: bf16/fp16/fp8 storage, weights loaded under inference
mode and moved outside it, the memory asked of the host, refusals, interrupts and a broken VAE.

What is emulated, and how:
- The device move. The executor runs loader nodes under ``torch.inference_mode()``; the host later moves the weights
  to the GPU with ``Module.to(device)`` outside it, which gives each Parameter new data but no version counter. Here
  the same torch path (``Module._apply`` -> ``param.data = ...``) runs as a dtype round trip with ``.to()`` outside
  inference mode (values unchanged); the node then trains inside inference mode, as the executor runs it.
- bf16 and fp16 compute: the models are built with the host's model config set to compute in that dtype on CPU.
- A weight away from the compute device: a target layer moved to the ``meta`` device (no data at all), so nothing
  about its LoRA can come from the weight itself. There is one real device here, so "the load device" is the CPU.
- A small device and a partial load: the host's total-memory answer is replaced for one test, and for another the
  host is asked to offload half of the model right after its own load (its ``partially_unload``).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from benchmarks import models as gm

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]

BUILDERS = {"flux": gm.make_flux, "qwen": gm.make_qwen, "sd3": gm.make_sd3}
# Layers whose output the model throws away (Qwen-Image's last block updates the caption stream, which nothing reads).
DISCARDED = {"qwen": {f"transformer_blocks.1.{m}" for m in ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.2")}}
STORAGE = {  # name: (stored, computed)
    "bf16": (torch.bfloat16, torch.bfloat16),
    "bf16_fp32": (torch.bfloat16, torch.float32),
    "fp8_fp32": (torch.float8_e4m3fn, torch.float32),
    "fp16": (torch.float16, torch.float16),
}


def loaded_under_inference_mode(kind, stored, computed, **kw):
    """A model made as a loader node makes it (inside inference mode), then moved by the host outside it."""
    with torch.inference_mode():
        model = BUILDERS[kind](dtype=stored, compute_dtype=computed, **kw)
    model.model.to(torch.float32).to(stored)  # Module._apply outside inference mode: new data, no version counter
    return model


def node_args(kind, model, save_name, **overrides):
    args = dict(model=model, vae=gm.make_tiny_vae(), image=gm.sample_image(64), positive=gm.conditioning(kind, 1),
                phase="fast", timesteps="", rank=4, alpha=8.0, learning_rate=2e-3, steps=4, seed=0, caption_dropout=0.0,
                gradient_checkpointing=True, save_name=save_name, resolution=64)
    args.update(overrides)
    return args


def train(comfy, kind, model, save_name, **overrides):
    with torch.inference_mode():  # as the executor runs every node
        return comfy.NODE_CLASS_MAPPINGS["GlanceTrainLoRA"].execute(**node_args(kind, model, save_name, **overrides)).args


def snapshot(model):
    """Every parameter and buffer of the model: the object, its dtype, device, requires_grad and a copy of its values."""
    out = {}
    with torch.inference_mode(False):
        for name, t in list(model.model.named_parameters()) + list(model.model.named_buffers()):
            out[name] = (t, t.dtype, t.device, t.requires_grad, t.detach().float().clone())
    return out


def assert_untouched(model, before):
    after = dict(list(model.model.named_parameters()) + list(model.model.named_buffers()))
    assert after.keys() == before.keys()
    for name, (obj, dtype, device, requires_grad, values) in before.items():
        t = after[name]
        assert t is obj, f"{name}: the model holds another Parameter object"
        assert (t.dtype, t.device, t.requires_grad) == (dtype, device, requires_grad), name
        with torch.inference_mode(False):
            assert torch.allclose(t.detach().float(), values, rtol=0, atol=0, equal_nan=True), f"{name}: values changed"
    dm = model.model.diffusion_model
    assert not hasattr(dm, "peft_config")
    assert not [n for n, m in dm.named_modules() if m._forward_hooks or m._forward_pre_hooks], "hooks left on the model"


def sample(comfy, model, kind):
    latent = {"samples": torch.zeros((1, 16, 1, 8, 8) if kind == "qwen" else (1, 16, 8, 8))}
    with torch.inference_mode():
        return comfy.NODE_CLASS_MAPPINGS["KSampler"]().sample(model, 3, 2, 1.0, "euler", "simple", gm.conditioning(kind, 1),
                                                              gm.conditioning(kind, 2), latent)[0]["samples"]


@pytest.mark.parametrize("storage", list(STORAGE))
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_trains_any_storage_after_the_device_move(comfy, base_dir, kind, storage):
    stored, computed = STORAGE[storage]
    model = loaded_under_inference_mode(kind, stored, computed)
    before = snapshot(model)
    assert all(not t[0].is_inference() for t in before.values())  # the state the first backward used to fail on
    trained, name, _ = train(comfy, kind, model, f"gpu_paths/{kind}_{storage}")
    assert_untouched(model, before)

    path = base_dir / "models" / "loras" / name
    lora = safetensors.torch.load_file(path)
    ups = {k[len("diffusion_model."):-len(".lora_up.weight")]: v.float() for k, v in lora.items() if k.endswith(".lora_up.weight")}
    assert ups and all(torch.isfinite(u).all() for u in ups.values())
    untrained = {k for k, u in ups.items() if u.abs().sum() == 0}
    assert untrained <= DISCARDED.get(kind, set()), f"layers that never trained: {sorted(untrained)}"
    meta = safetensors.safe_open(str(path), "pt").metadata()
    assert ("loss scaling" in meta["glance.precision"]) == (computed == torch.float16)


def test_lora_terms_are_fp32_on_the_load_device_wherever_the_weight_is(comfy, pack):
    adapters = pack("training.adapters")
    recipes = pack("training.recipes")
    model = gm.make_flux(dtype=torch.float8_e4m3fn)
    dm = model.model.diffusion_model
    targets = adapters.target_layers(dm, recipes.FLUX.target_modules)
    away = targets[0][1].to("meta")  # this layer's weight is nowhere the compute device is
    assert away.weight.device.type == "meta"
    with adapters.lora_terms(dm, targets, 4, 8.0, 0, model.load_device) as pairs:
        assert set(pairs) == {n for n, _ in targets}
        for pair in pairs.values():
            for t in (pair.down, pair.up):
                assert t.device == model.load_device and t.dtype == torch.float32 and t.requires_grad
        assert pairs[targets[0][0]].down.shape == (4, away.in_features)
    assert not [n for n, m in dm.named_modules() if m._forward_hooks]


@pytest.fixture
def load_calls(monkeypatch):
    """Every call the trainer makes to the host's load_models_gpu (the call still goes through)."""
    import comfy.model_management as mm

    calls = []
    real = mm.load_models_gpu

    def spy(models, memory_required=0, *args, **kwargs):
        calls.append(dict(models=models, memory_required=memory_required, inference_mode=torch.is_inference_mode_enabled(),
                          **kwargs))
        return real(models, memory_required, *args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    return calls


def recipe_estimate(pack, model, kind, lora_params, checkpointing=True, resolution=64):
    """The recipe's memory for this run, from what the test can see: the saved file's parameter count, the
    latent's patches and the caption's tokens, the model's width and blocks."""
    memory = pack("training.memory")
    recipe = pack("training.recipes").detect_recipe(model)
    dm = model.model.diffusion_model
    per_token = dict(recipe.activation_per_token)
    blocks = [memory.BlockList(name, len(getattr(dm, name)), per_token[name]) for name in recipe.block_lists]
    latent_tokens = (resolution // 8 // 2) ** 2
    tokens = latent_tokens + gm.conditioning(kind, 1)[0][0].shape[1]
    width = dm.get_submodule(recipe.context_module).out_features
    acts = memory.activation_elements(blocks, tokens, width, checkpointing) * 4  # fp32 on CPU
    return lora_params * (4 + 4 + 8) + acts  # parameters, gradients, AdamW moments: fp32


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_memory_asked_of_the_host_covers_the_recipe(comfy, pack, base_dir, load_calls, kind):
    model = BUILDERS[kind]()
    _, name, _ = train(comfy, kind, model, f"gpu_paths/memory_{kind}", gradient_checkpointing=kind == "flux")
    lora = safetensors.torch.load_file(base_dir / "models" / "loras" / name)
    lora_params = sum(v.numel() for k, v in lora.items() if k.endswith(("lora_up.weight", "lora_down.weight")))
    ours = [c for c in load_calls if c["models"][0].model is model.model]
    assert ours and ours[0].get("force_full_load") is True
    # loaded (moved) as the executor loads models: weights moved outside inference mode would keep no version
    # counter; the guider's own load after it finds the model loaded
    assert ours[0]["inference_mode"]
    needed = recipe_estimate(pack, model, kind, lora_params, checkpointing=kind == "flux")
    assert ours[0]["memory_required"] >= needed > 0, (ours[0]["memory_required"], needed)


def test_too_small_a_device_is_refused_before_loading(comfy, pack, base_dir, load_calls, monkeypatch):
    import comfy.model_management as mm

    model = gm.make_qwen()
    monkeypatch.setattr(mm, "get_total_memory", lambda *a, **k: 8 * 1024 ** 2)  # an 8 MiB device
    with pytest.raises(RuntimeError, match=r"needs about .* GiB on cpu") as err:
        train(comfy, "qwen", model, "gpu_paths/too_small", gradient_checkpointing=False)
    message = str(err.value)
    for words in ("weights", "LoRA parameters", "gradients", "optimiser state", "activations",
                  "gradient_checkpointing", "resolution", "rank", "Nothing was trained"):
        assert words in message, words
    assert not [c for c in load_calls if c["models"][0].model is model.model]  # the model was never loaded
    assert not (base_dir / "models" / "loras" / "gpu_paths" / "too_small.safetensors").exists()


def test_partial_load_is_refused_with_the_memory_needed(comfy, base_dir, monkeypatch):
    import comfy.model_management as mm

    model = gm.make_flux()
    before = snapshot(model)
    real = mm.load_models_gpu

    def load_then_offload_half(models, *args, **kwargs):
        real(models, *args, **kwargs)
        for m in models:  # what the host does when the device is short: part of the model back to the offload device
            m.partially_unload(m.offload_device, m.model_size() // 2)

    monkeypatch.setattr(mm, "load_models_gpu", load_then_offload_half)
    with pytest.raises(RuntimeError, match=r"Only part of the model fits .* needs all of it there .* GiB") as err:
        train(comfy, "flux", model, "gpu_paths/partial")
    assert "rank" in str(err.value) and "resolution" in str(err.value)
    monkeypatch.undo()
    mm.load_models_gpu([model])
    assert_untouched(model, before)
    assert not (base_dir / "models" / "loras" / "gpu_paths" / "partial.safetensors").exists()


def test_interrupt_at_step_3_of_10_leaves_nothing_behind(comfy, base_dir):
    import comfy.model_management as mm
    import comfy.patcher_extension as pe

    with torch.inference_mode():  # as a loader node makes it: inference tensors (what the executor hands on)
        model = gm.make_qwen(dtype=torch.bfloat16, compute_dtype=torch.bfloat16)
    before = snapshot(model)
    reference = sample(comfy, model, "qwen")
    forwards = []

    def interrupt_during_step_3(executor, *args, **kwargs):
        forwards.append(1)
        if len(forwards) == 3:
            mm.interrupt_current_processing(True)  # as the Cancel button does, while step 3 runs
        return executor(*args, **kwargs)

    watched = model.clone()
    watched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "glance-test-interrupt", interrupt_during_step_3)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(comfy, "qwen", watched, "gpu_paths/interrupted", steps=10)
    finally:
        mm.interrupt_current_processing(False)
    assert len(forwards) == 3  # steps 1-3 ran to their optimiser step; step 4 never started
    assert not (base_dir / "models" / "loras" / "gpu_paths" / "interrupted.safetensors").exists()
    assert_untouched(model, before)
    assert torch.equal(sample(comfy, model, "qwen"), reference)  # no LoRA term left in the forward pass


def test_interrupt_inside_the_backward_pass_stays_an_interrupt(comfy, base_dir):
    """The Cancel button lands while step 2's backward pass runs (the host checks for it in every op, also in the
    blocks recomputed for gradient checkpointing): half of that step's graph is left unrun. The node ends with the
    host's interrupt, the base is intact and samples as before."""
    import comfy.model_management as mm

    with torch.inference_mode():  # as a loader node makes it: inference tensors (what the executor hands on)
        model = gm.make_qwen()
    before = snapshot(model)
    reference = sample(comfy, model, "qwen")
    cut = []

    def raise_in_backward(grad):
        cut.append(1)
        raise mm.InterruptProcessingException()  # what the host's every-op check raises

    def arm_in_step_2(module, args, output):
        # Block 0's output of step 2 (not its recompute): its gradient arrives after block 1's backward has run.
        if torch.is_grad_enabled() and isinstance(output, tuple) and output[-1].requires_grad:
            seen.append(1)
            if len(seen) == 2:
                output[-1].register_hook(raise_in_backward)

    seen = []
    handle = model.model.diffusion_model.transformer_blocks[0].register_forward_hook(arm_in_step_2)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(comfy, "qwen", model, "gpu_paths/interrupted_backward", steps=5, gradient_checkpointing=False)
    finally:
        handle.remove()
    assert cut == [1]  # the interrupt was raised inside the backward pass of step 2
    assert not (base_dir / "models" / "loras" / "gpu_paths" / "interrupted_backward.safetensors").exists()
    assert_untouched(model, before)
    assert torch.equal(sample(comfy, model, "qwen"), reference)


def test_nan_latent_from_the_vae_is_an_error_naming_the_vae(comfy, base_dir):
    vae = gm.make_tiny_vae()
    with torch.no_grad():
        next(p for p in vae.first_stage_model.parameters() if p.ndim == 4)[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^vae: the VAE \(\w+\) encoded the image to NaN") as err:
        train(comfy, "flux", gm.make_flux(), "gpu_paths/nan_vae", vae=vae)
    assert "learning_rate" not in str(err.value)
    assert not (base_dir / "models" / "loras" / "gpu_paths" / "nan_vae.safetensors").exists()


def test_gpu_check_runs_its_code_path_on_cpu(comfy):
    """benchmarks/gpu_check.py --cpu-smoke, in-process: file -> stock loader (bf16, fp8) -> train slow + fast -> sample."""
    import folder_paths

    from benchmarks import gpu_check

    if not gpu_check.stock_loader_reads(gpu_check.TINY):
        pytest.skip("this host's stock loader reads only full-width FLUX files (v0.3.64 fixes the widths): the smoke "
                    "model would have 0.4B parameters; run `python benchmarks/gpu_check.py --cpu-smoke` by hand")
    gpu_check.write_model(Path(folder_paths.get_folder_paths("diffusion_models")[0]) / gpu_check.FILE, gpu_check.TINY)
    for storage in ("default", "fp8_e4m3fn"):
        row = gpu_check.check(comfy, storage, gpu_check.TINY, 64, 2, torch.device("cpu"))
        assert row["finite"] and row["s_per_step"] > 0 and row["estimate"] > 0 and row["switch_ms"] >= 0, row


def test_nan_loss_on_inference_mode_weights_restores_the_model(comfy, base_dir):
    with torch.inference_mode():
        model = gm.make_flux(dtype=torch.bfloat16, compute_dtype=torch.bfloat16)
        model.model.diffusion_model.final_layer.linear.weight[0, 0] = float("nan")  # a broken checkpoint
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="loss is nan"):
        train(comfy, "flux", model, "gpu_paths/nan_loss")
    assert_untouched(model, before)
    assert not (base_dir / "models" / "loras" / "gpu_paths" / "nan_loss.safetensors").exists()
