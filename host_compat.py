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
