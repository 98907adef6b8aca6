"""Small real flow-matching models for tests and benchmarks, built from ComfyUI's own classes.

Random weights, real architectures: Flux and Qwen-Image in-process (the stock detector only knows their
full widths), and an SD3-family MMDiT written as a file that the stock UNETLoader detects by its widths.
"""
from __future__ import annotations

from pathlib import Path

import torch

CONTEXT_DIM = 48
POOLED_DIM = 32
HIDDEN = 64
# Widths the stock detector cannot read from a state dict (it assumes the full-size models): small ones here.
FLUX_WIDTHS = dict(hidden_size=HIDDEN, num_heads=2, axes_dim=[8, 12, 12], context_in_dim=CONTEXT_DIM, vec_in_dim=POOLED_DIM)
QWEN_WIDTHS = dict(attention_head_dim=32, num_attention_heads=2, joint_attention_dim=CONTEXT_DIM, axes_dims_rope=(8, 12, 12))


def _meta(*shape):
    return torch.empty(shape, device="meta")


def _flux_layout(depth: int = 2, single: int = 2) -> dict:
    """The keys (shapes only) by which the host's detector recognises a FLUX.1-dev diffusion model."""
    sd = {"img_in.weight": _meta(HIDDEN, 64), "txt_in.weight": _meta(HIDDEN, CONTEXT_DIM),
          "vector_in.in_layer.weight": _meta(HIDDEN, POOLED_DIM), "guidance_in.in_layer.weight": _meta(HIDDEN, 256)}
    sd.update({f"double_blocks.{i}.img_attn.norm.key_norm.scale": _meta(32) for i in range(depth)})
    sd.update({f"single_blocks.{i}.norm.key_norm.scale": _meta(32) for i in range(single)})
    return sd


def _qwen_layout(layers: int = 2) -> dict:
    """The keys (shapes only) by which the host's detector recognises a Qwen-Image diffusion model."""
    sd = {"txt_norm.weight": _meta(CONTEXT_DIM), "img_in.weight": _meta(64, 64)}
    sd.update({f"transformer_blocks.{i}.img_mod.1.weight": _meta(6 * 64, 64) for i in range(layers)})
    return sd


def _patcher(layout: dict, widths: dict, seed: int, std: float, dtype=torch.float32, compute_dtype=None):
    """A model built as the host builds one it loads: its detector's config (with every field this host version
    has) and its model config class, with only the widths set small; seeded random weights. Stored in ``dtype``,
    computed in ``compute_dtype`` (default: fp32 for any other storage, as the host does on CPU)."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    unet_config = comfy.model_detection.detect_unet_config(layout, "")
    unet_config.update(widths)
    config = comfy.model_detection.model_config_from_unet_config(unet_config)
    if compute_dtype is None:
        compute_dtype = torch.float32
    config.set_inference_dtype(dtype, None if compute_dtype == dtype else compute_dtype)
    model = config.get_model({}, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * std).to(p.dtype))
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def make_flux(seed: int = 0, std: float = 0.08, depth: int = 2, single: int = 2, dtype=torch.float32,
              compute_dtype=None, **widths):
    """A small FLUX.1-dev-architecture model stored in ``dtype`` (computed in ``compute_dtype``, default fp32 as
    the host does on CPU); ``widths`` override FLUX_WIDTHS (e.g. hidden_size, num_heads, axes_dim)."""
    return _patcher(_flux_layout(depth, single), {**FLUX_WIDTHS, **widths}, seed, std, dtype, compute_dtype)


def make_qwen(seed: int = 0, std: float = 0.08, dtype=torch.float32, compute_dtype=None):
    return _patcher(_qwen_layout(), QWEN_WIDTHS, seed, std, dtype, compute_dtype)


def _sd3_layout(hidden: int) -> dict:
    """The keys (shapes only) from which the host's detector reads an SD3-family MMDiT's whole config."""
    return {"joint_blocks.0.context_block.attn.qkv.weight": _meta(3 * hidden, hidden),
            "x_embedder.proj.weight": _meta(hidden, 16, 2, 2), "final_layer.linear.weight": _meta(16 * 4, hidden),
            "y_embedder.mlp.0.weight": _meta(hidden, POOLED_DIM), "context_embedder.weight": _meta(hidden, CONTEXT_DIM),
            "pos_embed": _meta(1, 32 * 32, hidden)}


def make_sd3(seed: int = 0, hidden: int = 128, std: float = 0.05, dtype=torch.float32, compute_dtype=None):
    """The SD3-family MMDiT of ``write_sd3_file``, built in-process (stored in ``dtype``, computed in ``compute_dtype``)."""
    patcher = _patcher(_sd3_layout(hidden), {}, seed, std, dtype, compute_dtype)
    dm = patcher.model.diffusion_model
    with torch.no_grad():  # a buffer the host allocates with torch.empty: left alone it is whatever memory held
        pos = torch.randn(dm.pos_embed.shape, generator=torch.Generator().manual_seed(seed + 1)) * std
        dm.pos_embed.copy_(pos.to(dm.pos_embed.dtype))
    return patcher


def sd3_state_dict(seed: int = 0, hidden: int = 128, std: float = 0.05) -> dict:
    """A bare MMDiT state dict (keys as in a diffusion-model file) that the stock detector reads as SD3."""
    dm = make_sd3(seed, hidden, std).model.diffusion_model
    return {k: v.contiguous() for k, v in dm.state_dict().items()}


def write_sd3_file(path: Path, seed: int = 0) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd3_state_dict(seed), str(path))
    return path


def _full_flux_dev_layout() -> dict:
    """FLUX.1-dev's keys and the shapes the detector reads (hidden 3072, T5 4096, CLIP-L 768, 19 + 38 blocks)."""
    sd = {"img_in.weight": _meta(3072, 64), "txt_in.weight": _meta(3072, 4096),
          "vector_in.in_layer.weight": _meta(3072, 768), "guidance_in.in_layer.weight": _meta(3072, 256)}
    sd.update({f"double_blocks.{i}.img_attn.norm.key_norm.scale": _meta(128) for i in range(19)})
    sd.update({f"single_blocks.{i}.norm.key_norm.scale": _meta(128) for i in range(38)})
    return sd


def _full_qwen_image_layout() -> dict:
    """Qwen-Image's keys and the shapes the detector reads (hidden 3072, Qwen2.5-VL 3584, 60 blocks)."""
    sd = {"txt_norm.weight": _meta(3584), "img_in.weight": _meta(3072, 64), "proj_out.weight": _meta(64, 3072)}
    sd.update({f"transformer_blocks.{i}.img_mod.1.weight": _meta(18432, 3072) for i in range(60)})
    return sd


def make_full_size_on_meta(kind: str, dtype=torch.bfloat16, compute_dtype=torch.bfloat16):
    """The full-size FLUX.1-dev ("flux") or Qwen-Image ("qwen") diffusion model as the host builds it from a file
    stored in ``dtype``, on the ``meta`` device: every layer and shape, no memory and no weights (for sizes only)."""
    import comfy.model_detection
    import comfy.model_patcher

    layout = {"flux": _full_flux_dev_layout, "qwen": _full_qwen_image_layout}[kind]()
    config = comfy.model_detection.model_config_from_unet_config(comfy.model_detection.detect_unet_config(layout, ""))
    config.set_inference_dtype(dtype, None if compute_dtype == dtype else compute_dtype)
    model = config.get_model({}, device="meta")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


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


def run_node(nodes, node_id: str, **inputs) -> tuple:
    """Run a registered node by id as the executor would, V1 (FUNCTION) or V3 (execute) alike; its outputs."""
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "define_schema"):
        return tuple(cls.execute(**inputs).args)
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))
