"""The training image: checks, the paper's resize, and one VAE encode to the latent the model trains on."""
from __future__ import annotations

import logging

import comfy.utils
import torch

from ..host_compat import latent_downscale

log = logging.getLogger("comfyui-glance")


def prepare_image(image: torch.Tensor, resolution: int, multiple: int) -> torch.Tensor:
    """ComfyUI IMAGE [1,H,W,C] (0..1) -> RGB [1,h,w,3], long side ``resolution``, sides floored to ``multiple``.

    Grayscale is repeated to RGB and an alpha channel dropped, each with a log line; anything else that is not
    one usable image is refused with an error naming the ``image`` input.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError("image: expected a ComfyUI IMAGE (a [batch, height, width, channels] tensor); connect an image.")
    batch, height, width, channels = image.shape
    if batch == 0 or height == 0 or width == 0:
        raise ValueError(f"image: the image is empty (shape {tuple(image.shape)}); connect a real image.")
    if batch > 1:
        raise ValueError(
            f"image: got a batch of {batch} images; Glance trains on ONE image. Pick one image from the batch."
        )
    if channels in (1, 2):
        log.info("Glance trainer: grayscale image, repeated to RGB%s.", " (alpha dropped)" if channels == 2 else "")
        image = image[..., :1].expand(-1, -1, -1, 3)
    elif channels == 4:
        log.info("Glance trainer: RGBA image, alpha channel dropped (the model trains on RGB).")
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(f"image: {channels} channels per pixel; expected RGB (3), RGBA (4) or grayscale (1).")
    image = image.float()
    if not torch.isfinite(image).all():
        raise ValueError("image: contains NaN or infinite values; re-load the image.")
    image = image.clamp(0.0, 1.0)

    scale = resolution / max(height, width)
    new_w = int(width * scale) // multiple * multiple
    new_h = int(height * scale) // multiple * multiple
    if new_w < multiple or new_h < multiple:
        raise ValueError(
            f"image: {width}x{height} is too thin: with the long side at {resolution} px the short side is under "
            f"{multiple} px. Crop it to a less extreme aspect ratio or raise 'resolution'."
        )
    # Center-crop to the target aspect ratio, then resize (the paper: long side 1024, floored to 32).
    pixels = comfy.utils.common_upscale(image.movedim(-1, 1), new_w, new_h, "bicubic", "center")
    return pixels.movedim(1, -1).clamp(0.0, 1.0).contiguous()


def encode_latent(vae, pixels: torch.Tensor, model) -> torch.Tensor:
    """Encode once; the latent in the layout the model samples: 5-D [B, C, 1, h, w] where the model's latent format
    has 3 dimensions (Qwen-Image, Wan, HunyuanVideo, LTXV, Cosmos; a video VAE encodes one image to that), else
    4-D [B, C, h, w]. A latent the model cannot take as it is (several frames, another layout) is refused, never
    reshaped or broadcast into another."""
    latent = vae.encode(pixels)
    if not torch.isfinite(latent).all():
        name = type(getattr(vae, "first_stage_model", vae)).__name__
        raise ValueError(
            f"vae: the VAE ({name}) encoded the image to NaN or infinite values, so there is nothing to train on. Its "
            "weights are broken or it overflows in the precision it runs in (VAEs in fp16 often do): use an intact VAE "
            "that belongs to the model, in fp32 or bf16. Nothing was trained or saved."
        )
    expected = model.model.latent_format.latent_channels
    if latent.shape[1] != expected:
        raise ValueError(
            f"vae: this VAE makes {latent.shape[1]}-channel latents but the model expects {expected}; "
            "connect the VAE that belongs to the model."
        )
    dims = getattr(model.model.latent_format, "latent_dimensions", 2)
    if latent.ndim == 5 and latent.shape[2] != 1:
        raise ValueError(f"vae: this VAE encoded the one image to {latent.shape[2]} latent frames "
                         f"(shape {tuple(latent.shape)}); connect the VAE that belongs to the model.")
    if dims == 3 and latent.ndim == 4:
        latent = latent.unsqueeze(2)  # an image VAE's latent as one frame
    elif dims == 2 and latent.ndim == 5:
        latent = latent.squeeze(2)
    if latent.ndim != dims + 2:
        raise ValueError(f"vae: the latent has shape {tuple(latent.shape)}, but this {type(model.model).__name__} "
                         f"model samples {dims + 2}-D latents; connect the VAE that belongs to the model.")
    return latent.float().clone()


def check_conditioning(positive, patcher, recipe) -> None:
    """A clear error when ``positive`` is not a caption encoded for this model's text encoder."""
    if not isinstance(positive, (list, tuple)) or not positive or not isinstance(positive[0], (list, tuple)):
        raise ValueError("positive: expected CONDITIONING: the caption encoded with the model's text encoder.")
    cond, extras = positive[0][0], positive[0][1]
    if not isinstance(cond, torch.Tensor) or cond.ndim != 3 or cond.shape[1] == 0:
        raise ValueError("positive: the conditioning holds no caption embedding; encode the caption with the model's text encoder.")
    dm = patcher.model.diffusion_model
    hint = f"encode the caption with the text encoder that belongs to this {recipe.arch} model."
    if recipe.context_module:
        width = dm.get_submodule(recipe.context_module).in_features
        if cond.shape[-1] != width:
            raise ValueError(f"positive: caption embedding width {cond.shape[-1]} does not fit this {recipe.arch} model "
                             f"(it takes {width}): the caption was encoded for another model; {hint}")
    if recipe.pooled_module:
        pooled = extras.get("pooled_output")
        width = dm.get_submodule(recipe.pooled_module).in_features
        if not isinstance(pooled, torch.Tensor):
            raise ValueError(f"positive: this {recipe.arch} model needs a pooled caption embedding (pooled_output), "
                             f"and the conditioning has none; {hint}")
        if pooled.shape[-1] != width:
            raise ValueError(f"positive: pooled embedding width {pooled.shape[-1]} does not fit this {recipe.arch} model "
                             f"(it takes {width}); {hint}")
    for entry in positive:
        check_reference_latents(entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}, patcher)


REFERENCE_FIX = ("encode the reference image with the VAE that belongs to this model (VAE Encode into ReferenceLatent, "
                 "or TextEncodeQwenImageEdit / TextEncodeQwenImageEditPlus with its vae input connected).")


def check_reference_latents(extras: dict, patcher) -> None:
    """A clear error naming ``positive`` when a reference latent in the conditioning (an edit model's image to edit,
    put there by ReferenceLatent or TextEncodeQwenImageEdit(Plus)) is not in this model's own latent layout: the host
    would fail deep inside the model or, for a 4-D latent on a 3-D model (v0.33), silently read it as many frames."""
    references = extras.get("reference_latents")
    if references is None:
        return
    fmt = patcher.model.latent_format
    channels, dims = fmt.latent_channels, getattr(fmt, "latent_dimensions", 2)
    model = type(patcher.model).__name__
    layout = f"[batch, {channels}, frames, height, width]" if dims == 3 else f"[batch, {channels}, height, width]"
    for n, ref in enumerate(references, 1):
        where = f"positive: reference latent {n}"
        if not isinstance(ref, torch.Tensor):
            raise ValueError(f"{where} is a {type(ref).__name__}, not a latent tensor; {REFERENCE_FIX}")
        if ref.ndim != dims + 2:
            raise ValueError(f"{where} has shape {tuple(ref.shape)}, but this {model} model reads {layout} latents "
                             f"(another VAE's layout); {REFERENCE_FIX}")
        if ref.shape[1] != channels:
            raise ValueError(f"{where} has {ref.shape[1]} channels; this {model} model's latents have {channels} "
                             f"(it was encoded by another model's VAE); {REFERENCE_FIX}")
        if ref.numel() == 0:
            raise ValueError(f"{where} is empty (shape {tuple(ref.shape)}); {REFERENCE_FIX}")
        if not torch.isfinite(ref).all():
            raise ValueError(f"{where} holds NaN or infinite values (a broken encode: the VAE's weights, or fp16 "
                             f"overflow); {REFERENCE_FIX}")


def check_image_size(model, width: int, height: int, input_name: str) -> None:
    """An error naming ``input_name`` when an image of ``width`` x ``height`` px is larger than the model's learned
    position embedding covers (SD3-family MMDiT: ``pos_embed_max_size`` patches a side); models with RoPE take any
    size."""
    dm = model.model.diffusion_model
    limit = getattr(dm, "pos_embed_max_size", None)
    embedder = getattr(dm, "x_embedder", None)
    if not limit or getattr(dm, "pos_embed", None) is None or embedder is None:
        return
    patch = int(embedder.patch_size[0])
    down = latent_downscale(model)
    most = int(limit) * patch * down
    for side, px in (("width", int(width)), ("height", int(height))):
        if (px // down + 1) // patch > limit:
            raise ValueError(f"{input_name}: an image {side} of {px} px is more than this {type(model.model).__name__} "
                             f"model's position embedding covers ({most} px a side); use {most} px or less.")
