"""The two training jobs, start to end: the trainer's (one image) and the distiller's (prompts only).

Each job takes the node's inputs as they are (-1 = ``AUTO``: the architecture's default), checks everything before
anything is loaded or trained, runs, and writes its files only after the last step (an error or an interrupt saves
nothing). Errors name the input to change. The node modules resolve the models folders and hand in plain paths.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..host_compat import latent_downscale
from ..sampling import teacher
from ..sampling.schedule_fit import fine_schedule
from ..schedules.checks import finite
from ..schedules.records import latent_resolution
from ..schedules.switch import EXPERTS, validate_switch_sigma
from .data import check_conditioning, check_image_size, encode_latent, prepare_image
from .distill import DistillResult, check_settings, distill_experts, expert_metadata
from .lora_file import (build_metadata, comfy_lora_state_dict, resolve_pair, resolve_save_path, save_atomic,
                        save_pair_atomic)
from .recipes import TRAIN_PHASES, Recipe, detect_recipe, phase_timesteps, timesteps_to_sigmas
from .settings import AUTO, DistillSettings, TrainSettings
from .trainer import TrainResult, train_lora

log = logging.getLogger("comfyui-glance")


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
    finite(value, name, f"give a positive value, or -1 for the architecture's default ({default})")
    if value <= 0:
        raise ValueError(f"{name}: {value} is not valid; give a positive value, or -1 for the architecture's default ({default}).")
    return value


def train_settings(model, recipe: Recipe, inputs: TrainInputs) -> tuple[TrainSettings, tuple[float, ...]]:
    """The run's settings from the node's inputs, checked, and the phase's timesteps (as sigmas of this model in the
    settings)."""
    rank = int(pick(inputs.rank, recipe.rank, "rank"))
    alpha = float(pick(inputs.alpha, recipe.alpha, "alpha"))
    learning_rate = float(pick(inputs.learning_rate, recipe.learning_rate, "learning_rate"))
    steps = int(pick(inputs.steps, recipe.steps, "steps"))
    if not 0.0 <= inputs.caption_dropout <= 1.0:
        raise ValueError(f"caption_dropout: {inputs.caption_dropout} is not a probability; use 0..1 (paper: 0.1).")
    if inputs.phase not in TRAIN_PHASES:
        raise ValueError(f"phase: '{inputs.phase}' is not one of {TRAIN_PHASES}.")
    model_sampling = model.get_model_object("model_sampling")
    ts = phase_timesteps(recipe, model_sampling, inputs.phase, inputs.timesteps)
    if recipe.inplace_blocks and not inputs.gradient_checkpointing:
        log.warning("Glance trainer: %s blocks update tensors in place, which autograd can only differentiate "
                    "with gradient checkpointing; it was turned on.", recipe.arch)
    return TrainSettings.for_recipe(
        recipe, sigmas=timesteps_to_sigmas(ts, model_sampling), rank=rank, alpha=alpha, learning_rate=learning_rate,
        steps=steps, seed=inputs.seed, caption_dropout=inputs.caption_dropout,
        gradient_checkpointing=inputs.gradient_checkpointing), ts


def _logged(on_step):
    """``on_step`` of the trainer, with a log line at the first, every 10th and the last step."""
    def report(step: int, loss: float, sigma: float, total: int) -> None:
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == total:
            log.info("Glance trainer: step %d/%d  loss %.5f  sigma %.4f", step + 1, total, loss, sigma)
        if on_step is not None:
            on_step(step, loss, sigma, total)
    return report


def train_job(model, vae, image, positive, inputs: TrainInputs, loras_dir: Path,
              on_step: Callable[[int, float, float, int], None] | None = None) -> TrainOutcome:
    """Train and save one LoRA for ``model`` from ``image`` and its caption ``positive``."""
    recipe = detect_recipe(model)
    settings, ts = train_settings(model, recipe, inputs)
    file_name, path = resolve_save_path(inputs.save_name, loras_dir)
    check_conditioning(positive, model, recipe)
    with torch.no_grad():
        pixels = prepare_image(image, inputs.resolution, max(recipe.multiple, latent_downscale(model)))
        check_image_size(model, pixels.shape[2], pixels.shape[1], "resolution")
        latent = encode_latent(vae, pixels, model)
    if recipe.guidance is not None:
        positive = [[c, {**extras, "guidance": recipe.guidance}] for c, extras in positive]
    log.info("Glance trainer: %s, phase %s, t=%s, %dx%d px, rank %d alpha %g lr %g, %d steps", recipe.arch, inputs.phase,
             list(ts), pixels.shape[2], pixels.shape[1], settings.rank, settings.alpha, settings.learning_rate, settings.steps)
    result = train_lora(model, latent, positive, settings, recipe.arch, _logged(on_step))
    lora_sd = comfy_lora_state_dict(result.adapters, settings.alpha)
    metadata = build_metadata(
        base_model=recipe.arch, model_class=type(model.model).__name__, phase=inputs.phase,
        timesteps=list(ts),
        sigmas=list(settings.sigmas), rank=settings.rank, alpha=settings.alpha, steps=settings.steps,
        learning_rate=settings.learning_rate, seed=inputs.seed, caption_dropout=inputs.caption_dropout,
        target_modules=list(recipe.target_modules), resolution=[int(pixels.shape[2]), int(pixels.shape[1])],
        optimizer=result.optimizer, precision=result.precision, final_loss=result.losses[-1] if result.losses else None)
    save_atomic(lora_sd, path, metadata)
    log.info("Glance trainer: saved %s (%d modules)", file_name, len(result.adapters))
    return TrainOutcome(file_name=file_name, lora=lora_sd, recipe=recipe, phase=inputs.phase, result=result)


@dataclass(frozen=True)
class DistillInputs:
    sigmas: tuple[float, ...]  # the few-step schedule the experts will sample
    switch_sigma: float
    cfg: float = 5.0
    cfg_fast: float = AUTO  # -1: same as cfg
    rank: int = AUTO
    learning_rate: float = 3e-5
    steps: int = 200
    rollouts: int = 16
    seed: int = 0
    save_name_slow: str = "glance/distilled_slow"
    save_name_fast: str = "glance/distilled_fast"
    fine_steps: int = teacher.FINE_STEPS
    scheduler: str = teacher.FINE_SCHEDULER
    gradient_checkpointing: bool = True
    handover_sigma: float | None = None  # with model_low_noise: where the pair hands over (None: one model)
    sampler_name: str = "euler"  # the sampler the experts will run with
    refresh: int = 25  # optimiser steps between two rolls of the sampler with the current expert (not a node input)


@dataclass
class DistillOutcome:
    file_names: dict[str, str]  # expert -> file name relative to the loras folder
    loras: dict[str, dict[str, torch.Tensor]]  # expert -> the saved state dict (the host's key format)
    recipe: Recipe
    result: DistillResult


def distill_settings(model, recipe: Recipe, inputs: DistillInputs) -> DistillSettings:
    """The run's settings from the node's inputs, checked. FLUX's distilled guidance stays as the conditioning has
    it: the experts learn the model as it is sampled."""
    rank = recipe.rank if inputs.rank == AUTO else int(inputs.rank)
    model_sampling = model.get_model_object("model_sampling")
    settings = DistillSettings.for_recipe(
        recipe, sigmas=tuple(inputs.sigmas), switch_sigma=validate_switch_sigma(inputs.switch_sigma),
        teacher_sigmas=tuple(float(s) for s in fine_schedule(model_sampling, inputs.scheduler, int(inputs.fine_steps))),
        cfg=float(inputs.cfg), cfg_fast=float(inputs.cfg if inputs.cfg_fast == AUTO else inputs.cfg_fast),
        rollouts=int(inputs.rollouts), steps=int(inputs.steps), rank=rank,
        alpha=float(rank) * recipe.alpha / recipe.rank,  # the recipe's scale alpha/rank
        learning_rate=float(inputs.learning_rate), seed=int(inputs.seed),
        gradient_checkpointing=inputs.gradient_checkpointing,
        handover_sigma=None if inputs.handover_sigma is None else validate_switch_sigma(inputs.handover_sigma,
                                                                                         "handover_sigma"),
        sampler=inputs.sampler_name, refresh=int(inputs.refresh))
    check_settings(settings)
    return settings


def check_pair(model, low_noise, recipe: Recipe) -> None:
    """``low_noise`` must be the other expert of ``model``'s family (same model class and recipe)."""
    low_recipe = detect_recipe(low_noise)
    if low_recipe.arch != recipe.arch or type(low_noise.model) is not type(model.model):
        raise ValueError(
            f"model_low_noise: a {type(low_noise.model).__name__} ({low_recipe.arch}) model, but model is a "
            f"{type(model.model).__name__} ({recipe.arch}); the two must be the high- and the low-noise expert of one "
            "family (e.g. Wan 2.2 A14B's two models). Connect the low-noise expert of model's family, or nothing.")


def distill_job(model, prompts: list, negative, latent: torch.Tensor, inputs: DistillInputs, loras_dir: Path,
                on_progress: Callable[[int, int], None] | None = None, low_noise=None) -> DistillOutcome:
    """Distil and save the slow and the fast expert of ``model`` (``prompts``: one conditioning per prompt;
    ``latent``: one empty latent in the model's layout). With ``low_noise`` (and ``inputs.handover_sigma``) the
    teacher is the pair and the fast expert trains on ``low_noise`` (training/distill.py)."""
    recipe = detect_recipe(model)
    if (low_noise is None) != (inputs.handover_sigma is None):
        raise ValueError("handover_sigma: give it together with model_low_noise (and only then).")
    if low_noise is not None:
        check_pair(model, low_noise, recipe)
    settings = distill_settings(model, recipe, inputs)
    teacher.check_rollouts_cover_prompts(len(prompts), settings.rollouts)
    # Both names checked before any work; a half pair left by a cut run of these two names may be replaced.
    (slow, fast), left_over = resolve_pair({"save_name_slow": inputs.save_name_slow,
                                            "save_name_fast": inputs.save_name_fast}, loras_dir)
    if slow[1] == fast[1]:
        raise ValueError(f"save_name_fast: '{fast[0]}' is the slow expert's name too; give the two experts "
                         "different names.")
    paths = {"slow": slow, "fast": fast}
    log.info("Glance distill: %s, %d prompt(s), %d rollouts, schedule %s (switch %.4f), cfg %g/%g, rank %d, lr %g, "
             "%d steps per expert, on the states %s visits", recipe.arch, len(prompts), settings.rollouts,
             [round(s, 4) for s in settings.sigmas], settings.switch_sigma, settings.cfg, settings.cfg_fast,
             settings.rank, settings.learning_rate, settings.steps, settings.sampler)
    if len(prompts) == 1:
        log.info("Glance distill: one prompt; the experts specialise in it and may land slightly further from the "
                 "model's fine run than the schedule alone on other prompts. For prompts in general, join many with "
                 "Conditioning (Combine) (32 on the demo kit: 1.2 dB closer than the schedule alone at 6 Euler steps, "
                 "with rollouts 32, learning_rate 1e-4, rank 32, 400 steps; README).")
    result = distill_experts(model, prompts, negative, latent, settings, recipe.arch, on_progress, low_noise)
    log.info("Glance distill: teacher %d model passes; loss slow %.5g -> %.5g, fast %.5g -> %.5g",
             result.teacher_passes, *_first_last(result.losses["slow"]), *_first_last(result.losses["fast"]))
    loras, files = {}, []
    models = {"slow": model, "fast": model if low_noise is None else low_noise}
    for expert in EXPERTS:
        loras[expert] = comfy_lora_state_dict(result.adapters[expert], settings.alpha)
        metadata = build_metadata(
            base_model=recipe.arch, model_class=type(models[expert].model).__name__, resolution=latent_resolution(latent, latent_downscale(model)),
            optimizer=result.optimizer, precision=result.precision, final_loss=result.losses[expert][-1],
            prompts=len(prompts), pair=[slow[0], fast[0]], **expert_metadata(settings, expert))
        files.append((f"save_name_{expert}", loras[expert], paths[expert][1], metadata))
    save_pair_atomic(files, left_over)  # both experts or neither
    log.info("Glance distill: saved %s and %s", paths["slow"][0], paths["fast"][0])
    return DistillOutcome(file_names={e: paths[e][0] for e in EXPERTS}, loras=loras, recipe=recipe, result=result)


def _first_last(values: list[float]) -> tuple[float, float]:
    window = max(1, len(values) // 10)
    return sum(values[:window]) / window, sum(values[-window:]) / window
