"""What the node modules share about their inputs: the declarations used by several nodes, and the input checks.

Declarations here keep each input's name, default, range and tooltip in one place; each node lists them in its own
order (input names and their order are a public contract). ``AUTO`` (-1) is "the architecture's default" for the
trainers' numbers; the fit's switch_sigma uses ``AUTO_SWITCH`` (0.0) instead, because its widget's range starts at 0
and a switch at sigma 0 would mean no fast step.
"""
from __future__ import annotations

import math

import comfy.samplers
import torch
from comfy_api.latest import io

from ...host_compat import fix_empty_latent, latent_downscale
from ...sampling.teacher import split_prompts
from ...schedules.sampler_steps import SUPPORTED_SAMPLERS, check_sampler
from ...schedules.switch import SWITCH_SIGMA_MAX, switch_sigma_problem
from ...training.data import check_conditioning, check_image_size
from ...training.recipes import detect_recipe
from ...training.settings import AUTO

AUTO_SWITCH = 0.0
SEED_MAX = 0xFFFFFFFFFFFFFFFF


# --- declarations ---------------------------------------------------------------------------------------------

def phase_model_inputs() -> list:
    """The inputs both phase nodes share, in the order both show them: the two models and the prompts."""
    return [
        io.Model.Input("model_slow", tooltip="Model for the early, high-noise steps (e.g. base + Glance Slow-LoRA)."),
        io.Model.Input("model_fast", tooltip="Model for the late, low-noise steps (e.g. base + Glance Fast-LoRA)."),
        io.Conditioning.Input("positive", tooltip="What the image should show."),
        io.Conditioning.Input("negative", tooltip="What to steer away from; unused in a phase whose cfg is 1.0."),
    ]


def switch_sigma_input(tooltip: str, default: float = 0.9, optional: bool = False):
    return io.Float.Input("switch_sigma", default=default, min=0.0, max=SWITCH_SIGMA_MAX, step=0.001, round=0.0001,
                          optional=optional, tooltip=tooltip)


def cfg_input(name: str, tooltip: str, default: float = 5.0, low: float = 0.0, optional: bool = False):
    return io.Float.Input(name, default=default, min=low, max=100.0, step=0.1, round=0.01, optional=optional,
                          tooltip=tooltip)


def phase_cfg_inputs(slow_tip: str) -> list:
    return [cfg_input("cfg_slow", slow_tip),
            cfg_input("cfg_fast", "CFG scale of the fast phase; 1.0 skips the negative pass (half the cost per step).",
                      default=1.0)]


def seed_input(tooltip: str, control_after_generate: bool | None = None):
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=control_after_generate,
                        tooltip=tooltip)


def scheduler_input(tooltip: str, optional: bool = False, default: str = "simple"):
    return io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default=default, optional=optional,
                          tooltip=tooltip)


def size_latent_input():
    return io.Latent.Input("latent_image", tooltip="An empty latent of the size you generate at (only its size is used).")


def rank_input():
    return io.Int.Input("rank", default=AUTO, min=AUTO, max=512,
                        tooltip="LoRA rank; -1: the architecture's default (Qwen-Image 32, the others 16).")


def low_noise_inputs() -> list:
    """The optional second model of a pair of experts (e.g. Wan 2.2 A14B's) and where the pair hands over."""
    return [
        io.Model.Input("model_low_noise", optional=True,
                       tooltip="Optional second model, e.g. Wan 2.2 A14B's low-noise expert (then 'model' is the "
                               "high-noise one): the teacher is the pair, handing over at handover_sigma, and the "
                               "schedule switches there, as Glance Phase KSampler will sample with the two."),
        io.Float.Input("handover_sigma", default=0.875, min=0.0, max=SWITCH_SIGMA_MAX, step=0.001, round=0.0001,
                       optional=True,
                       tooltip="With model_low_noise: the sigma where the pair hands over (Wan 2.2 A14B: 0.875 "
                               "text-to-video, 0.9 image-to-video). Unused without a second model."),
    ]


def gradient_checkpointing_input(optional: bool = False):
    return io.Boolean.Input("gradient_checkpointing", default=True, optional=optional,
                            tooltip="Recompute each block's activations in the backward pass: much less memory, somewhat "
                                    "slower. FLUX always uses it (its blocks update tensors in place).")


# --- checks ---------------------------------------------------------------------------------------------------

def sampler_input(what: str) -> io.Combo.Input:
    """The optional ``sampler_name`` of the nodes that fit for a sampler (the host's list; only the samplers
    schedules/sampler_steps.py models are accepted, see ``sampler_problem``)."""
    return io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler", optional=True,
                          tooltip=f"The sampler you will sample with: {what} It can model "
                                  + ", ".join(SUPPORTED_SAMPLERS) + ".")


def sampler_problem(sampler_name: str | None) -> str | None:
    """Why ``sampler_name`` cannot be fitted for (the samplers it can, named), or None."""
    if sampler_name is None:  # a linked input: checked in execute
        return None
    try:
        check_sampler(sampler_name)
    except ValueError as e:
        return str(e)
    return None


def validate_inputs(switch_sigma=None, *problems: str | None) -> bool | str:
    """The body of every node's ``validate_inputs``: switch_sigma's range (NaN included; taking an input there turns
    off the host's own min/max check for it; a linked input arrives as None and is checked in execute), then the
    node's own ``problems`` (None where there is none). True, or the first problem."""
    if switch_sigma is not None and (problem := switch_sigma_problem(switch_sigma)):
        return problem
    return next((p for p in problems if p), True)


def check_cfg(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not a number: use a finite CFG scale (1.0 turns CFG off for that phase).")


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


def check_low_noise(model_low_noise, positive, negative, latent) -> None:
    """The pair's second model, when connected, must read the same prompts and sample the same latent as ``model``."""
    if model_low_noise is not None:
        check_prompts(model_low_noise, positive, negative)
        check_latent_fits(model_low_noise, latent, "model_low_noise")


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
    down = latent_downscale(model)
    check_image_size(model, latent.shape[-1] * down, latent.shape[-2] * down, "latent_image")
    return torch.zeros_like(latent[:1])
