"""Where the supported ComfyUI hosts (v0.3.64 .. v0.33.x) differ, and the one way this pack bridges each difference.

Everything else in the pack uses the host's public API directly. Each function here names the host change it
covers; none replaces or patches any part of the host.
"""
from __future__ import annotations

import contextlib
import inspect

import comfy.model_management
import comfy.sample
import torch


def host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:  # a host without the version file (older than any we support, or a source checkout)
        return "unknown"


def fix_empty_latent(model, latent: dict) -> torch.Tensor:
    """``comfy.sample.fix_empty_latent_channels`` as the host's KSampler calls it (v0.33 also passes the latent's
    spatial/temporal downscale ratios; v0.3.64 takes the model and the samples only)."""
    params = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    if "downscale_ratio_spacial" in params:
        return comfy.sample.fix_empty_latent_channels(model, latent["samples"], latent.get("downscale_ratio_spacial"),
                                                      latent.get("downscale_ratio_temporal"))
    return comfy.sample.fix_empty_latent_channels(model, latent["samples"])


def sampled_latent(latent: dict, samples: torch.Tensor) -> dict:
    """The LATENT a sampler node returns, as the host's KSampler builds it: intermediate device (and, on v0.33,
    intermediate dtype), downscale-ratio hints dropped once the latent is sampled."""
    dtype = getattr(comfy.model_management, "intermediate_dtype", None)
    samples = samples.to(device=comfy.model_management.intermediate_device(),
                         dtype=dtype() if dtype is not None else samples.dtype)
    out = latent.copy()
    out.pop("downscale_ratio_spacial", None)
    out.pop("downscale_ratio_temporal", None)
    out["samples"] = samples
    return out


@contextlib.contextmanager
def training_mode():
    """What the host's own Train LoRA node sets around its loop. v0.33: ``comfy.model_management.in_training``
    selects differentiable kernels (without it FLUX/Qwen rope runs comfy_kitchen kernels that have no autograd).
    v0.3.64 has no such switch (its kernels are always differentiable)."""
    if not hasattr(comfy.model_management, "in_training"):
        yield
        return
    before = comfy.model_management.in_training
    comfy.model_management.in_training = True
    try:
        yield
    finally:
        comfy.model_management.in_training = before


def non_dynamic(patcher):
    """A patcher whose weights are ordinary module tensors, for training.

    v0.33 loads models with dynamic VRAM by default on GPUs (``ModelPatcherDynamic``, comfy-aimdo): weights are
    streamed per layer into buffers that the host reuses for the next layer, so a weight autograd kept for the
    backward pass would be overwritten. The host's own answer, used by its torch.compile and multi-GPU nodes, is the
    non-dynamic delegate ``clone(disable_dynamic=True)``: the same model file loaded again the classic way (in RAM,
    then onto the device), leaving the dynamic model as it was. v0.3.64 and CPU patchers are never dynamic.
    """
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if is_dynamic is None or not is_dynamic():
        return patcher
    try:
        return patcher.clone(disable_dynamic=True)
    except RuntimeError as e:
        raise ValueError(
            "model: this model is loaded with ComfyUI's dynamic VRAM, which training cannot use, and it was not made by "
            "a model loader that can load it again without it. Load it with a core model loader, or start ComfyUI with "
            f"--disable-dynamic-vram. ({e})"
        ) from None


# Latent formats of v0.3.64 whose latents are not 1/8 of the image (v0.33 says so itself: spacial_downscale_ratio).
_DOWNSCALE_0_3_64 = {"Wan22": 16, "HunyuanImage21": 32, "LTXV": 32, "SC_Prior": 42, "SC_B": 4, "ChromaRadiance": 1}


def latent_downscale(model) -> int:
    """Image pixels per latent pixel (each side) of ``model``'s latents. v0.33's latent formats carry it
    (``spacial_downscale_ratio``: 16 for Flux.2 and Wan 2.2 5B, 32 for HunyuanImage 2.1 and LTXV); v0.3.64's do not,
    so there the format's class name decides, with the values v0.33 gives the same formats."""
    latent_format = model.get_model_object("latent_format")
    ratio = getattr(latent_format, "spacial_downscale_ratio", None)
    if ratio is not None:
        return int(ratio)
    for cls in type(latent_format).__mro__:
        if cls.__name__ in _DOWNSCALE_0_3_64:
            return _DOWNSCALE_0_3_64[cls.__name__]
    return 8
