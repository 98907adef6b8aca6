"""Small real flow-matching models for tests and benchmarks, built from ComfyUI's own classes.

Random weights, real architectures: Flux and Qwen-Image in-process (the stock detector only knows their
full widths), and an SD3-family MMDiT written as a file that the stock UNETLoader detects by its widths.
"""
from __future__ import annotations

from pathlib import Path

import torch

FLUX_CONFIG = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=48, hidden_size=64,
    mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000,
    patch_size=2, qkv_bias=True, guidance_embed=True,
)
QWEN_CONFIG = dict(
    image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
    attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48, axes_dims_rope=(8, 12, 12),
)
CONTEXT_DIM = 48
POOLED_DIM = 32


def _patcher(model_cls, unet_config: dict, seed: int, std: float):
    import comfy.model_management as mm
    import comfy.model_patcher

    config = model_cls(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def make_flux(seed: int = 0, std: float = 0.08):
    import comfy.supported_models as sm

    return _patcher(sm.Flux, FLUX_CONFIG, seed, std)


def make_qwen(seed: int = 0, std: float = 0.08):
    import comfy.supported_models as sm

    return _patcher(sm.QwenImage, QWEN_CONFIG, seed, std)


def sd3_state_dict(seed: int = 0, hidden: int = 128, std: float = 0.05) -> dict:
    """A bare MMDiT state dict (keys as in a diffusion-model file) that the stock detector reads as SD3."""
    import comfy.supported_models as sm

    unet_config = dict(
        in_channels=16, patch_size=2, out_channels=16, depth=hidden // 64, input_size=None,
        adm_in_channels=POOLED_DIM, num_patches=32 * 32, pos_embed_max_size=32, pos_embed_scaling_factor=None,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": CONTEXT_DIM, "out_features": hidden}},
        x_block_self_attn_layers=[],
    )
    patcher = _patcher(sm.SD3, unet_config, seed, std)
    dm = patcher.model.diffusion_model
    with torch.no_grad():  # a buffer the host allocates with torch.empty: left alone it is whatever memory held
        dm.pos_embed.copy_(torch.randn(dm.pos_embed.shape, generator=torch.Generator().manual_seed(seed + 1)) * std)
    return {k: v.contiguous() for k, v in dm.state_dict().items()}


def write_sd3_file(path: Path, seed: int = 0) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd3_state_dict(seed), str(path))
    return path


def conditioning(kind: str, seed: int = 1, tokens: int = 8, std: float = 1.0):
    """A [[cond, extras]] conditioning list with the extras each architecture needs."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn((1, tokens, CONTEXT_DIM), generator=gen) * std
    extras: dict = {}
    if kind in ("flux", "sd3"):
        extras["pooled_output"] = torch.randn((1, POOLED_DIM), generator=gen) * std
    if kind == "flux":
        extras["guidance"] = 3.5
    return [[cond, extras]]


def empty_latent(height: int = 16, width: int = 16, batch: int = 1) -> dict:
    """An empty 16-channel latent (as EmptySD3LatentImage makes it), ``height``/``width`` in latent pixels."""
    return {"samples": torch.zeros((batch, 16, height, width))}


def linear_modules(patcher, contains: str = "") -> list[str]:
    """Native names of the diffusion model's Linear layers (optionally only those containing ``contains``)."""
    return [name for name, mod in patcher.model.diffusion_model.named_modules()
            if isinstance(mod, torch.nn.Linear) and contains in name]


def random_lora(patcher, modules: list[str], rank: int = 4, seed: int = 0, scale: float = 0.5) -> dict:
    """A LoRA state dict in the host's own key style (``diffusion_model.<module>.lora_up/.lora_down/.alpha``)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    named = dict(patcher.model.diffusion_model.named_modules())
    for name in modules:
        layer = named[name]
        sd[f"diffusion_model.{name}.lora_down.weight"] = torch.randn((rank, layer.in_features), generator=gen) * scale
        sd[f"diffusion_model.{name}.lora_up.weight"] = torch.randn((layer.out_features, rank), generator=gen) * scale
        sd[f"diffusion_model.{name}.alpha"] = torch.tensor(float(rank))
    return sd


def save_lora(sd: dict, path: Path) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path))
    return path


def make_tiny_vae(seed: int = 0, latent_channels: int = 16):
    """A real comfy.sd.VAE (the host's TAESD architecture, 16-ch latents, /8) with seeded random weights."""
    import comfy.sd
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in taesd.state_dict().items():
        if k in ("vae_scale", "vae_shift"):
            sd[k] = torch.tensor(1.0 if k == "vae_scale" else 0.0)
        elif v.ndim > 1:  # conv weights: fan-in scaled so activations stay O(1)
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=gen) * (1.0 / fan_in) ** 0.5
        else:
            sd[k] = torch.zeros(v.shape)
    return comfy.sd.VAE(sd=sd)


def sample_image(size: int = 64):
    """A real photo (scikit-image's astronaut), as a ComfyUI IMAGE [1,size,size,3] in 0..1."""
    import numpy as np
    from skimage import data

    img = torch.from_numpy(np.asarray(data.astronaut(), dtype=np.float32) / 255.0)[None]
    return torch.nn.functional.interpolate(img.movedim(-1, 1), size=(size, size), mode="area").movedim(1, -1)
