"""Small models of every flow-matching family the host runs, built from the host's own detector configs.

Each family is described by the keys (shapes only, on the ``meta`` device) by which ``comfy.model_detection``
recognises a full-size file of that family. The host's detector turns them into the family's config and picks its
model config class (``comfy.supported_models``), exactly as for a real file; only then are the widths set small
(depth, hidden size, heads, text widths) and the model built with seeded random weights. So every family keeps
the host's own layer names, latent format, model sampling and conditioning path, at a size that runs on a CPU.

A family this host does not have (an older host) is reported by ``build`` as ``Unsupported`` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

CONTEXT = 32  # caption embedding width of every small model
POOLED = 24  # pooled caption width where a family takes one


def _m(*shape):
    return torch.empty(shape, device="meta")


@dataclass(frozen=True)
class Family:
    name: str
    layout: dict  # key -> meta tensor: what the detector reads
    widths: dict  # small widths set on the detected config
    pooled: bool = False  # the conditioning carries a pooled embedding (pooled_output)
    extras: dict = field(default_factory=dict)  # other conditioning extras (values: shapes of random tensors or constants)
    model_class: str = ""  # the comfy.model_base class the host must build
    config_class: str = ""  # the comfy.supported_models class the detector must pick (when the model class is shared)
    downscale: int = 8  # image pixels per latent pixel (each side) of the family's own VAE
    context: int = CONTEXT
    std: float = 0.05


def _flux1():
    sd = {"img_in.weight": _m(3072, 64), "txt_in.weight": _m(3072, 4096), "vector_in.in_layer.weight": _m(3072, 768),
          "guidance_in.in_layer.weight": _m(3072, 256)}
    sd.update({f"double_blocks.{i}.img_attn.norm.key_norm.scale": _m(128) for i in range(2)})
    sd.update({f"single_blocks.{i}.norm.key_norm.scale": _m(128) for i in range(2)})
    return sd


def _flux2():
    sd = {"img_in.weight": _m(6144, 128), "txt_in.weight": _m(6144, 15360),
          "double_stream_modulation_img.lin.weight": _m(6144 * 6, 6144)}
    sd.update({f"double_blocks.{i}.img_attn.norm.key_norm.scale": _m(128) for i in range(2)})
    sd.update({f"single_blocks.{i}.norm.key_norm.scale": _m(128) for i in range(2)})
    return sd


def _chroma():
    sd = {"img_in.weight": _m(3072, 64), "txt_in.weight": _m(3072, 4096),
          "distilled_guidance_layer.norms.0.scale": _m(5120)}
    sd.update({f"double_blocks.{i}.img_attn.norm.key_norm.scale": _m(128) for i in range(2)})
    sd.update({f"single_blocks.{i}.norm.key_norm.scale": _m(128) for i in range(2)})
    return sd


def _qwen():
    sd = {"txt_norm.weight": _m(3584), "img_in.weight": _m(3072, 64), "proj_out.weight": _m(64, 3072)}
    sd.update({f"transformer_blocks.{i}.img_mod.1.weight": _m(18432, 3072) for i in range(2)})
    return sd


def _sd3():
    return {"joint_blocks.0.context_block.attn.qkv.weight": _m(3 * 1536, 1536), "x_embedder.proj.weight": _m(1536, 16, 2, 2),
            "final_layer.linear.weight": _m(64, 1536), "y_embedder.mlp.0.weight": _m(1536, 2048),
            "context_embedder.weight": _m(1536, 4096), "pos_embed": _m(1, 192 * 192, 1536),
            "joint_blocks.1.context_block.attn.qkv.weight": _m(3 * 1536, 1536)}


def _auraflow():
    sd = {"positional_encoding": _m(1, 1024, 3072), "cond_seq_linear.weight": _m(3072, 2048)}
    sd.update({f"double_layers.{i}.attn.w1q.weight": _m(3072, 3072) for i in range(1)})
    sd.update({f"single_layers.{i}.attn.w1q.weight": _m(3072, 3072) for i in range(1)})
    return sd


def _lumina2(dim: int, cap: int):
    sd = {"cap_embedder.1.weight": _m(dim, cap), "noise_refiner.0.attention.k_norm.weight": _m(dim // 24)}
    sd.update({f"layers.{i}.ffn_norm1.weight": torch.ones(dim) for i in range(2)})  # Z-Image's fp16 check reads it
    return sd


def _hidream():
    return {"caption_projection.0.linear.weight": _m(2560, 4096)}


def _hunyuan(video: bool, image21: bool = False):
    if video:
        sd = {"img_in.proj.weight": _m(3072, 16, 1, 2, 2), "final_layer.linear.weight": _m(64, 3072),
              "vector_in.in_layer.weight": _m(3072, 768), "guidance_in.in_layer.weight": _m(3072, 256)}
    else:  # HunyuanImage 2.1: 2-D patches, 64-channel latents, no pooled input, byT5 glyph encoder
        sd = {"img_in.proj.weight": _m(3584, 64, 1, 1), "final_layer.linear.weight": _m(64, 3584),
              "byt5_in.fc1.weight": _m(2048, 1472)}
    sd["txt_in.individual_token_refiner.blocks.0.norm1.weight"] = _m(3072)
    sd["txt_in.input_embedder.weight"] = _m(3072, 4096 if video else 3584)
    sd.update({f"double_blocks.{i}.img_attn_q_norm.weight": _m(128) for i in range(2)})
    sd.update({f"single_blocks.{i}.q_norm.weight": _m(128) for i in range(1)})
    return sd


def _wan(dim: int, in_dim: int, out_dim: int):
    sd = {"head.modulation": _m(1, 2, dim), "head.head.weight": _m(out_dim * 4, dim), "blocks.0.ffn.0.weight": _m(dim * 4, dim),
          "patch_embedding.weight": _m(dim, in_dim, 1, 2, 2)}
    sd.update({f"blocks.{i}.norm3.weight": _m(dim) for i in range(2)})
    return sd


def _ltxv():
    sd = {"adaln_single.emb.timestep_embedder.linear_1.bias": _m(2048),
          "transformer_blocks.0.attn2.to_k.weight": _m(2048, 2048)}
    sd.update({f"transformer_blocks.{i}.scale_shift_table": _m(6, 2048) for i in range(2)})
    return sd


def _cosmos_predict2():
    sd = {"x_embedder.proj.1.weight": _m(2048, 17 * 4)}
    sd.update({f"blocks.{i}.mlp.layer1.weight": _m(8192, 2048) for i in range(2)})
    return sd


FLUX_SMALL = dict(hidden_size=64, num_heads=2, axes_dim=[8, 12, 12], context_in_dim=CONTEXT)
FAMILIES = {f.name: f for f in [
    Family("FLUX.1", _flux1(), {**FLUX_SMALL, "vec_in_dim": POOLED}, pooled=True, extras={"guidance": 3.5}, model_class="Flux"),
    Family("Flux.2", _flux2(), dict(hidden_size=64, num_heads=2, axes_dim=[8, 8, 8, 8], context_in_dim=CONTEXT),
           model_class="Flux2", config_class="Flux2", downscale=16),
    Family("Chroma", _chroma(), {**FLUX_SMALL, "out_dim": 64, "hidden_dim": 64, "n_layers": 1}, model_class="Chroma"),
    Family("Qwen-Image", _qwen(), dict(attention_head_dim=32, num_attention_heads=2, joint_attention_dim=CONTEXT,
                                       axes_dims_rope=(8, 12, 12)), model_class="QwenImage"),
    Family("SD3", _sd3(), dict(depth=2, num_patches=32 * 32, pos_embed_max_size=32,
                               adm_in_channels=POOLED, context_embedder_config={
                                   "target": "torch.nn.Linear", "params": {"in_features": CONTEXT, "out_features": 128}}),
           pooled=True, model_class="SD3"),
    Family("AuraFlow", _auraflow(), dict(dim=64, n_heads=2, global_conddim=64, cond_seq_dim=CONTEXT, max_seq=32 * 32), model_class="AuraFlow"),
    Family("Lumina2", _lumina2(2304, 2304), dict(dim=64, n_heads=2, n_kv_heads=2, axes_dims=[8, 12, 12], cap_feat_dim=CONTEXT,
                                                 multiple_of=16), extras={"attention_mask": "ones"},
           model_class="Lumina2", config_class="Lumina2"),
    Family("Z-Image", _lumina2(3840, 2560), dict(dim=256, n_heads=2, n_kv_heads=2, axes_dims=[32, 48, 48],
                                                 cap_feat_dim=CONTEXT, multiple_of=16), extras={"attention_mask": "ones"},
           model_class="Lumina2", config_class="ZImage"),
    Family("HiDream", _hidream(), dict(attention_head_dim=32, num_attention_heads=2, caption_channels=[CONTEXT, CONTEXT],
                                       text_emb_dim=POOLED, num_layers=1, num_single_layers=1, axes_dims_rope=[8, 12, 12],
                                       llama_layers=[0, 1]),
           pooled=True, extras={"conditioning_llama3": (1, 2, 8, CONTEXT)}, model_class="HiDream"),
    Family("HunyuanImage 2.1", _hunyuan(False), dict(hidden_size=64, num_heads=2, axes_dim=[16, 16], context_in_dim=CONTEXT),
           model_class="HunyuanImage21", downscale=32),
    Family("Wan 2.1", _wan(1536, 16, 16), dict(dim=64, num_heads=2, ffn_dim=128, text_dim=CONTEXT, freq_dim=32),
           model_class="WAN21"),
    Family("Wan 2.2 A14B", _wan(5120, 16, 16), dict(dim=64, num_heads=2, ffn_dim=128, text_dim=CONTEXT, freq_dim=32),
           model_class="WAN21"),
    Family("Wan 2.2 5B", _wan(3072, 48, 48), dict(dim=64, num_heads=2, ffn_dim=128, text_dim=CONTEXT, freq_dim=32),
           model_class="WAN22", config_class="WAN22_T2V", downscale=16),
    Family("HunyuanVideo", _hunyuan(True), dict(hidden_size=64, num_heads=2, axes_dim=[8, 12, 12], context_in_dim=CONTEXT,
                                                vec_in_dim=POOLED), pooled=True, model_class="HunyuanVideo"),
    Family("LTXV", _ltxv(), dict(attention_head_dim=32, num_attention_heads=2, cross_attention_dim=64,
                                 caption_channels=CONTEXT),
           extras={"attention_mask": "ones"}, model_class="LTXV", downscale=32),
    Family("Cosmos Predict2", _cosmos_predict2(), dict(model_channels=64, num_heads=2, crossattn_emb_channels=CONTEXT,
                                                       adaln_lora_dim=16, in_channels=16, num_blocks=2),
           model_class="CosmosPredict2"),
]}
QWEN_IMAGE = "Qwen-Image"
# Qwen-Image with reference latents (Qwen-Image-Edit's path): the same model, the reference rides in the conditioning.
QWEN_EDIT = "Qwen-Image (reference latent)"


# Wan 2.2 A14B (an expert of the pair) as a file for the stock UNETLoader: its detector reads the width, the feed-forward
# width and the depth from the keys and fixes the rest (heads = width / 128, freq_dim 256, text_dim 4096: umT5-XXL's
# width), so a small file keeps those. 1.1M parameters.
WAN_A14B_FILE = dict(dim=128, num_heads=1, ffn_dim=256)


def file_state_dict(patcher) -> dict:
    """The diffusion model's weights as a diffusion_models file of its family holds them (the host's key names)."""
    return {k: v.detach().contiguous() for k, v in patcher.model.diffusion_model.state_dict().items()}


def wan21_vae_state_dict(dim: int, seed: int = 0) -> dict:
    """A Wan 2.1 VAE (the host's class and key names, as in wan_2.1_vae.safetensors) of width ``dim`` (the real one:
    96), seeded random weights (fan-in scaled, so activations stay O(1))."""
    import comfy.ldm.wan.vae

    vae = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    return _random_state(vae, seed)


class Unsupported(Exception):
    """The host does not have this family (older host)."""


def build(name: str, seed: int = 0, dtype=torch.float32, widths: dict | None = None):
    """A ModelPatcher of family ``name``: the host's detector config and model config class, small widths (the
    family's, or ``widths``: e.g. ``WAN_A14B_FILE`` for a model saved as a file the stock loader reads back)."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    fam = FAMILIES[name]
    unet_config = comfy.model_detection.detect_unet_config(fam.layout, "")
    config = comfy.model_detection.model_config_from_unet_config(unet_config) if unet_config else None
    if config is None:
        raise Unsupported(f"{name}: this ComfyUI host's detector does not know this family")
    if fam.config_class and type(config).__name__ != fam.config_class:
        raise Unsupported(f"{name}: this ComfyUI host has no {fam.config_class} model (it reads the file as "
                          f"{type(config).__name__})")
    config.unet_config.update(fam.widths if widths is None else widths)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device="cpu")
    if type(model).__name__ != fam.model_class:
        raise Unsupported(f"{name}: this host builds {type(model).__name__}, not {fam.model_class}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.diffusion_model.parameters()) + list(model.diffusion_model.buffers()):
            if t.is_floating_point() and t.ndim > 0:
                t.copy_((torch.randn(t.shape, generator=gen) * fam.std).to(t.dtype))
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def conditioning(name: str, seed: int = 1, tokens: int = 8) -> list:
    fam = FAMILIES[name]
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn((1, tokens, fam.context), generator=gen)
    # As the host's CLIPTextEncode returns it: the pooled_output key is there, None for text encoders without one.
    extras: dict = {"pooled_output": torch.randn((1, POOLED), generator=gen) if fam.pooled else None}
    for key, value in fam.extras.items():
        if value == "ones":  # a mask over the caption's tokens, as the family's text encoder returns it
            extras[key] = torch.ones((1, tokens), dtype=torch.long)
        else:
            extras[key] = torch.randn(value, generator=gen) if isinstance(value, tuple) else value
    return [[cond, extras]]


def latent_layout(patcher) -> tuple[int, int]:
    """(channels, dimensions) of the model's latents, from its latent format."""
    fmt = patcher.model.latent_format
    return fmt.latent_channels, getattr(fmt, "latent_dimensions", 2)


def empty_latent(patcher, side: int = 8, batch: int = 1) -> dict:
    """An empty latent of ``side`` x ``side`` latent pixels in the model's own layout, as its empty-latent node makes it."""
    channels, dims = latent_layout(patcher)
    shape = (batch, channels, 1, side, side) if dims == 3 else (batch, channels, side, side)
    return {"samples": torch.zeros(shape)}


def _random_state(module: torch.nn.Module, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in module.state_dict().items():
        if v.ndim > 1:  # conv weights: fan-in scaled so activations stay O(1)
            sd[k] = torch.randn(v.shape, generator=gen) * (1.0 / v[0].numel()) ** 0.5
        else:
            sd[k] = torch.zeros(v.shape) if v.is_floating_point() else v.clone()
    return sd


def make_vae(patcher, seed: int = 0):
    """A real ``comfy.sd.VAE`` with the model's latent channels and seeded random weights: the host's tiny video
    autoencoder (TAEHV, which encodes an image to a one-frame [B, C, 1, h, w] latent, as the families' video VAEs
    do) for 3-D families where the host has one for those channels, else its tiny image autoencoder (TAESD,
    [B, C, h, w]). The image side per latent side is 8 or 16, not necessarily the model's own: the trainer only
    needs the channels, and the test checks the layout."""
    import comfy.sd

    channels, dims = latent_layout(patcher)
    if dims == 3 and channels in (16, 48):
        try:
            import comfy.taesd.taehv
        except ImportError:  # v0.3.64 has no video TAE
            pass
        else:
            sd = _random_state(comfy.taesd.taehv.TAEHV(latent_channels=channels), seed)
            if channels == 16:
                sd["decoder.1.weight"] = sd["decoder.1.weight"].float()  # fp32: the Wan 2.1 variant, no rescaling
            return comfy.sd.VAE(sd=sd)
    import comfy.taesd.taesd

    sd = _random_state(comfy.taesd.taesd.TAESD(latent_channels=channels), seed)
    sd.update({"vae_scale": torch.tensor(1.0), "vae_shift": torch.tensor(0.0)})
    # 128 channels: the host's Flux.2 variant (taef2), which it tells from the others by this metadata.
    return comfy.sd.VAE(sd=sd, metadata={"tae_latent_channels": channels} if channels == 128 else None)
