"""Input checks the sampling and training nodes share: latents a model can sample, prompts that can drive it."""
from __future__ import annotations

import torch

from ..host_compat import fix_empty_latent, latent_downscale
from ..training.data import check_conditioning
from ..training.recipes import detect_recipe
from .teacher import split_prompts


def check_latent_fits(model, latent_image, name: str) -> None:
    """A clear error when ``latent_image`` (a tensor) does not have the channels and dimensions ``model`` samples."""
    latent_format = model.get_model_object("latent_format")
    channels = getattr(latent_format, "latent_channels", None)
    dims = getattr(latent_format, "latent_dimensions", 2)
    if channels is not None and latent_image.shape[1] != channels:
        raise ValueError(
            f"latent_image has {latent_image.shape[1]} channels but {name} ({type(model.model).__name__}) expects "
            f"{channels}: make the latent with this model's VAE or its empty-latent node (e.g. EmptySD3LatentImage for 16 channels)."
        )
    if latent_image.ndim not in (dims + 2, 4):
        raise ValueError(f"latent_image has shape {tuple(latent_image.shape)}, which {name} cannot sample.")


def check_prompts(model, positive, negative) -> list:
    """The prompts (entries of ``positive``), with clear errors for conditioning that cannot drive this model."""
    for name, value in (("positive", positive), ("negative", negative)):
        if not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(e, (list, tuple)) and len(e) >= 2 and isinstance(e[0], torch.Tensor) for e in value):
            raise ValueError(f"{name}: expected CONDITIONING (from CLIP Text Encode with the model's text encoder).")
    try:
        recipe = detect_recipe(model)
    except ValueError:
        recipe = None  # not a flow model: the fit still works, without the architecture's width checks
    prompts = split_prompts(positive)
    if recipe is not None:
        for prompt in prompts:
            check_conditioning(prompt, model, recipe)
    return prompts


def single_empty_latent(model, latent_image) -> torch.Tensor:
    """One empty latent of ``latent_image``'s size, in the model's layout (the fit samples from pure noise)."""
    if not isinstance(latent_image, dict) or not isinstance(latent_image.get("samples"), torch.Tensor):
        raise ValueError("latent_image: expected a LATENT (connect an empty latent of the size you generate at).")
    latent = fix_empty_latent(model, latent_image)
    check_latent_fits(model, latent, "model")
    return torch.zeros_like(latent[:1])


def latent_resolution(latent: torch.Tensor, model) -> list[int]:
    """[width, height] in pixels of the image ``model``'s VAE makes from ``latent`` (its own downscale: 8 for most
    families, 16 for Flux.2 and Wan 2.2 5B, 32 for HunyuanImage 2.1 and LTXV)."""
    ratio = latent_downscale(model)
    return [int(latent.shape[-1]) * ratio, int(latent.shape[-2]) * ratio]
