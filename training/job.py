"""One training job, start to end: defaults, validation, the image's latent, the loop, the saved file.

Everything is checked before anything is loaded or trained; the file is written only after the last step (an
error or an interrupt saves nothing). Errors name the input to change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..host_compat import latent_downscale
from .data import check_conditioning, encode_latent, prepare_image
from .lora_file import build_metadata, comfy_lora_state_dict, resolve_save_path, save_atomic
from .loop import TrainResult, TrainSettings, train_lora
from .recipes import PHASES, Recipe, detect_recipe, phase_timesteps, timesteps_to_sigmas

log = logging.getLogger(__name__)
AUTO = -1  # "the architecture's default" for rank, alpha, learning_rate and steps


@dataclass(frozen=True)
class TrainInputs:
    phase: str = "slow"
    timesteps: str = ""  # for phase "custom": comma-separated t in (0, 1000]
    rank: int = AUTO
    alpha: float = AUTO
    learning_rate: float = AUTO
    steps: int = AUTO
    seed: int = 0
    caption_dropout: float = 0.1
    gradient_checkpointing: bool = True
    save_name: str = "glance/glance_slow_lora"
    resolution: int = 1024


@dataclass
class TrainOutcome:
    file_name: str  # relative to the loras folder
    lora: dict[str, torch.Tensor]  # the saved state dict (the host's key format)
    recipe: Recipe
    phase: str
    result: TrainResult


def pick(value, default, name: str):
    """The input's value, or the architecture's default for -1; errors for other non-positive values."""
    if value == AUTO:
        return default
    if value <= 0:
        raise ValueError(f"{name}: {value} is not valid; give a positive value, or -1 for the architecture's default ({default}).")
    return value


def run(model, vae, image, positive, inputs: TrainInputs, loras_dir: Path,
        on_step: Callable[[int, float, float, int], None] | None = None) -> TrainOutcome:
    """Train and save one LoRA for ``model`` from ``image`` and its caption ``positive``."""
    recipe = detect_recipe(model)
    rank = int(pick(inputs.rank, recipe.rank, "rank"))
    alpha = float(pick(inputs.alpha, recipe.alpha, "alpha"))
    learning_rate = float(pick(inputs.learning_rate, recipe.learning_rate, "learning_rate"))
    steps = int(pick(inputs.steps, recipe.steps, "steps"))
    if not 0.0 <= inputs.caption_dropout <= 1.0:
        raise ValueError(f"caption_dropout: {inputs.caption_dropout} is not a probability; use 0..1 (paper: 0.1).")
    if inputs.phase not in PHASES:
        raise ValueError(f"phase: '{inputs.phase}' is not one of {PHASES}.")
    file_name, path = resolve_save_path(inputs.save_name, loras_dir)
    model_sampling = model.get_model_object("model_sampling")
    ts = phase_timesteps(recipe, model_sampling, inputs.phase, inputs.timesteps)
    sigmas = timesteps_to_sigmas(ts, model_sampling)
    check_conditioning(positive, model, recipe)

    checkpointing = inputs.gradient_checkpointing
    if recipe.inplace_blocks and not checkpointing:
        log.warning("Glance trainer: %s blocks update tensors in place, which autograd can only differentiate "
                    "with gradient checkpointing; it was turned on.", recipe.arch)
        checkpointing = True
    with torch.no_grad():
        pixels = prepare_image(image, inputs.resolution, max(recipe.multiple, latent_downscale(model)))
        latent = encode_latent(vae, pixels, model)
    if recipe.guidance is not None:
        positive = [[c, {**extras, "guidance": recipe.guidance}] for c, extras in positive]

    settings = TrainSettings(
        sigmas=sigmas, target_modules=recipe.target_modules, rank=rank, alpha=alpha, learning_rate=learning_rate,
        steps=steps, seed=inputs.seed, caption_dropout=inputs.caption_dropout, gradient_checkpointing=checkpointing,
        block_lists=recipe.block_lists, weight_decay=recipe.weight_decay,
        activation_per_token=dict(recipe.activation_per_token), width_module=recipe.context_module,
    )
    log.info("Glance trainer: %s, phase %s, t=%s, %dx%d px, rank %d alpha %g lr %g, %d steps", recipe.arch,
             inputs.phase, list(ts), pixels.shape[2], pixels.shape[1], rank, alpha, learning_rate, steps)
    result = train_lora(model, latent, positive, settings, recipe.arch, on_step)

    lora_sd = comfy_lora_state_dict(result.adapters, alpha)
    metadata = build_metadata(
        base_model=recipe.arch, model_class=type(model.model).__name__, phase=inputs.phase, timesteps=list(ts),
        sigmas=list(sigmas), rank=rank, alpha=alpha, steps=steps, learning_rate=learning_rate, seed=inputs.seed,
        caption_dropout=inputs.caption_dropout, target_modules=list(recipe.target_modules),
        resolution=[int(pixels.shape[2]), int(pixels.shape[1])], optimizer=result.optimizer,
        precision=result.precision, final_loss=result.losses[-1] if result.losses else None,
    )
    save_atomic(lora_sd, path, metadata)
    log.info("Glance trainer: saved %s (%d modules)", file_name, len(result.adapters))
    return TrainOutcome(file_name=file_name, lora=lora_sd, recipe=recipe, phase=inputs.phase, result=result)
