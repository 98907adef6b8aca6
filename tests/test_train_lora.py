"""GlanceTrainLoRA on the real host with small real models: learning, phase timesteps, reproducibility, files."""
from __future__ import annotations

import pytest
import safetensors
import safetensors.torch
import torch

from benchmarks import models as gm

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]

PHASE_FAST_FLUX = [t / 1000 for t in (926.6473, 825.7017, 677.9868, 441.1997, 60.5503)]


def train(comfy, model, kind, save_name, **overrides):
    """Run the node as the executor does (inside inference mode)."""
    args = dict(model=model, vae=gm.make_tiny_vae(), image=gm.sample_image(64), positive=gm.conditioning(kind, 1),
                phase="fast", timesteps="", rank=8, alpha=16.0, learning_rate=5e-3, steps=30, seed=0, caption_dropout=0.0,
                gradient_checkpointing=True, save_name=save_name, resolution=64)
    args.update(overrides)
    with torch.inference_mode():
        return comfy.NODE_CLASS_MAPPINGS["GlanceTrainLoRA"].execute(**args).args


class _LossProbe:
    """A host Sampler that measures the velocity loss through the guider's own prediction (cfg 1), no training."""

    def __init__(self, sigmas, seeds):
        self.sigmas, self.seeds, self.loss = sigmas, seeds, None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        total = []
        for seed in self.seeds:
            eps = torch.randn(latent_image.shape, generator=torch.Generator().manual_seed(seed))
            for s in self.sigmas:
                sigma = torch.full((latent_image.shape[0],), s)
                x_t = (1 - s) * latent_image + s * eps
                denoised = model_wrap(x_t, sigma, **extra_args)
                total.append(torch.mean(((x_t - denoised) / s - (eps - latent_image)) ** 2).item())
        self.loss = sum(total) / len(total)
        return latent_image


def phase_loss(pack, model, kind, sigmas):
    import comfy.samplers

    data = pack("training.data")
    latent = data.encode_latent(gm.make_tiny_vae(), data.prepare_image(gm.sample_image(64), 64, 32), model)
    probe = _LossProbe(sigmas, seeds=range(4))

    class Probe(comfy.samplers.Sampler):
        def sample(self, *a, **k):
            return probe.sample(*a, **k)

    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": gm.conditioning(kind, 1)})
    cond = guider.original_conds["positive"][0]
    if kind == "flux":
        cond["guidance"] = 1.0
    with torch.no_grad():
        guider.sample(torch.zeros_like(latent), latent, Probe(), torch.tensor(sigmas))
    return probe.loss


def load_sd3(comfy, base_dir):
    path = base_dir / "models" / "diffusion_models" / "glance_train_sd3.safetensors"
    if not path.exists():
        gm.write_sd3_file(path)
    with torch.inference_mode():
        return comfy.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(path.name, "default")[0]


@pytest.mark.parametrize("kind", ["flux", "qwen", "sd3"])
def test_training_lowers_phase_loss(comfy, pack, base_dir, kind):
    model = {"flux": gm.make_flux, "qwen": gm.make_qwen}[kind]() if kind != "sd3" else load_sd3(comfy, base_dir)
    recipes = pack("training.recipes")
    recipe = recipes.detect_recipe(model)
    ms = model.get_model_object("model_sampling")
    sigmas = list(recipes.timesteps_to_sigmas(recipes.phase_timesteps(recipe, ms, "fast"), ms))
    before = phase_loss(pack, model, kind, sigmas)
    trained, name, plot = train(comfy, model, kind, f"test/lower_{kind}")
    after = phase_loss(pack, trained, kind, sigmas)
    print(kind, recipe.arch, "phase loss", before, "->", after)
    assert after < 0.9 * before, (before, after)
    assert plot.shape == (1, 320, 512, 3) and name == f"test/lower_{kind}.safetensors"


def test_only_phase_timesteps_same_seed_same_lora(comfy, pack, base_dir):
    import comfy.patcher_extension as pe

    seen = []

    def record(executor, x, t, *args, **kwargs):
        seen.extend(float(v) for v in t.flatten())
        return executor(x, t, *args, **kwargs)

    model = gm.make_flux()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "glance-test-record", record)
    _, name_a, _ = train(comfy, model, "flux", "test/seed_a", steps=12, caption_dropout=0.3)
    assert len(seen) == 12
    assert all(any(abs(s - p) < 1e-6 for p in PHASE_FAST_FLUX) for s in seen), seen
    assert len({round(s, 6) for s in seen}) > 1
    _, name_b, _ = train(comfy, model, "flux", "test/seed_b", steps=12, caption_dropout=0.3)
    _, name_c, _ = train(comfy, model, "flux", "test/seed_c", steps=12, caption_dropout=0.3, seed=1)
    loras = base_dir / "models" / "loras"
    a, b, c = (safetensors.torch.load_file(loras / n) for n in (name_a, name_b, name_c))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("lora_down.weight"))

    seen.clear()
    train(comfy, model, "flux", "test/custom_t", steps=6, phase="custom", timesteps="1000, 500")
    assert seen and {round(s, 6) for s in seen} <= {1.0, 0.5}


def test_saved_file_reloads_like_node_output_base_untouched(comfy, pack, base_dir):
    model = gm.make_qwen(std=0.1)
    dm = model.model.diffusion_model
    weights = {k: v.clone() for k, v in dm.state_dict().items()}
    modules = [n for n, _ in dm.named_modules()]
    grad = {n: p.requires_grad for n, p in dm.named_parameters()}
    trained, name, _ = train(comfy, model, "qwen", "test/reload/qwen_slow", phase="slow", steps=20, rank=4, alpha=16.0)
    assert [n for n, _ in dm.named_modules()] == modules
    assert not [n for n, m in dm.named_modules() if m._forward_hooks or m._forward_pre_hooks], "LoRA hooks left on the base"
    assert {n: p.requires_grad for n, p in dm.named_parameters()} == grad
    after = dm.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)

    path = base_dir / "models" / "loras" / name
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["glance.base_model"] == "Qwen-Image" and meta["glance.phase"] == "slow"
    assert meta["glance.rank"] == "4" and float(meta["glance.alpha"]) == 16.0 and meta["glance.steps"] == "20"
    assert meta["glance.seed"] == "0" and meta["glance.pack_version"] and "1000.0" in meta["glance.timesteps"]
    # all 12 paper modules in both blocks, in the host's key format
    assert sum(k.endswith(".lora_down.weight") for k in keys) == 12 * 2
    assert "diffusion_model.transformer_blocks.0.img_mod.1.alpha" in keys

    with torch.inference_mode():
        reloaded = comfy.NODE_CLASS_MAPPINGS["LoraLoaderModelOnly"]().load_lora_model_only(model, name, 1.0)[0]
    pos, neg = gm.conditioning("qwen", 1), gm.conditioning("qwen", 2)
    latent = {"samples": torch.zeros((1, 16, 1, 8, 8))}
    ks = comfy.NODE_CLASS_MAPPINGS["KSampler"]()
    run = lambda m: ks.sample(m, 3, 4, 1.0, "euler", "simple", pos, neg, latent)[0]["samples"]  # noqa: E731
    out_node, out_file, out_base = run(trained), run(reloaded), run(model)
    assert torch.equal(out_node, out_file)
    assert not torch.allclose(out_node, out_base)

    # alpha honoured: the host merges W + up @ down * alpha / rank
    import comfy.model_management as mm

    lora = safetensors.torch.load_file(path)
    key = "transformer_blocks.1.attn.to_q"
    delta = lora[f"diffusion_model.{key}.lora_up.weight"].float() @ lora[f"diffusion_model.{key}.lora_down.weight"].float()
    mm.load_models_gpu([reloaded])
    merged = reloaded.model.diffusion_model.get_submodule(key).weight.detach().clone()
    mm.load_models_gpu([model])
    torch.testing.assert_close(merged, weights[key + ".weight"] + delta * 16.0 / 4, rtol=1e-5, atol=1e-6)


def test_released_glance_format_loads_in_glance_loader(comfy, pack, base_dir):
    """diffusers names, 'transformer.' prefix, mixed lora_A/lora_B and lora.down/lora.up, no alpha (FACTS 1)."""
    model = gm.make_qwen()
    gen = torch.Generator().manual_seed(5)
    sd, modules = {}, []
    for block in range(2):
        for i, mod in enumerate(("attn.to_q", "attn.add_k_proj", "attn.to_out.0", "img_mlp.net.2", "txt_mod.1")):
            weight = model.model.diffusion_model.get_submodule(f"transformer_blocks.{block}.{mod}").weight
            name = f"transformer.transformer_blocks.{block}.{mod}"
            down, up = torch.randn((4, weight.shape[1]), generator=gen) * 0.1, torch.randn((weight.shape[0], 4), generator=gen) * 0.1
            a, b = (".lora_A.weight", ".lora_B.weight") if i % 2 == 0 else (".lora.down.weight", ".lora.up.weight")
            sd[name + a], sd[name + b] = down.to(torch.bfloat16), up.to(torch.bfloat16)
            modules.append((f"transformer_blocks.{block}.{mod}", down, up))
    loras = base_dir / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(loras / "glance_release_style.safetensors"))

    patches = pack("sampling.lora_patches").lora_patches(model, sd, "test")
    assert len(patches) == len(modules)
    with torch.inference_mode():
        slow, fast = comfy.NODE_CLASS_MAPPINGS["GlanceLoraLoader"].execute(
            model, "glance_release_style.safetensors", 1.0, "None", 1.0, apply="merged").args
    import comfy.model_management as mm

    base = {name: model.model.diffusion_model.get_submodule(name).weight.detach().clone() for name, _, _ in modules}
    mm.load_models_gpu([slow])
    for name, down, up in modules:  # no alpha: scale 1
        merged = slow.model.diffusion_model.get_submodule(name).weight
        expected = base[name] + up.to(torch.bfloat16).float() @ down.to(torch.bfloat16).float()
        torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
    mm.load_models_gpu([model])
