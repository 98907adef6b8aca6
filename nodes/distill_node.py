"""GlanceDistillExperts: the Slow and the Fast expert distilled from the model's own fine-step sampling (prompts only)."""
from __future__ import annotations

import logging
from pathlib import Path

import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..training.distill import DistillSettings, distill_experts, phase_settings
from ..training.lora_file import build_metadata, comfy_lora_state_dict, resolve_save_path, save_atomic
from ..training.loss_plot import plot_loss
from ..training.recipes import detect_recipe
from .forward_experts import forward_expert_clones
from .input_checks import check_prompts, latent_resolution, single_empty_latent
from .lora_patches import lora_patches
from .schedule_fit import fine_schedule
from .schedules import SWITCH_SIGMA_MAX, switch_sigma_problem, validate_switch_sigma

log = logging.getLogger("comfyui-glance")
AUTO = -1
SAME_AS_CFG = -1.0


class GlanceDistillExperts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlanceDistillExperts",
            display_name="Glance Distill Experts (prompts only)",
            category="training/glance",
            description=(
                "Trains a Slow and a Fast expert (two LoRAs) so that the few-step schedule lands where the model's "
                "own fine-step sampling lands: the model (with no LoRA) samples a few images on a fine schedule, "
                "and for each big step [s_i, s_k] of the schedule the expert learns the velocity that goes from the "
                "fine run's x_i straight to its x_k. Needs prompts only, no image. Both experts train in one model "
                "load and are saved into models/loras."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model (never modified); it is also the teacher."),
                io.Conditioning.Input("positive", tooltip="One prompt, or a few joined with Conditioning (Combine): each entry is one "
                                                          "prompt and the teacher's rollouts take turns."),
                io.Conditioning.Input("negative", tooltip="The negative prompt you sample with (unused where cfg is 1.0)."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG of the teacher and of the slow phase, as you will sample with them."),
                io.Latent.Input("latent_image", tooltip="An empty latent of the size you generate at (only its size is used)."),
                io.Sigmas.Input("sigmas", tooltip="The few-step schedule the experts will sample (e.g. Glance Fit Schedule's SIGMAS)."),
                io.Float.Input("switch_sigma", default=0.9, min=0.0, max=SWITCH_SIGMA_MAX, step=0.001, round=0.0001,
                               tooltip="Steps starting above it are the slow expert's, the rest the fast expert's "
                                       "(connect the schedule's own switch_sigma)."),
                io.Int.Input("rank", default=AUTO, min=AUTO, max=512,
                             tooltip="LoRA rank; -1: the architecture's default (Qwen-Image 32, the others 16)."),
                io.Float.Input("learning_rate", default=3e-5, min=0.0, max=1.0, step=0.00001, round=0.0000001,
                               tooltip="AdamW learning rate, constant. From one prompt, higher rates fit that prompt better and "
                                       "other prompts worse; with several prompts, up to about 1e-4."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimiser steps per expert."),
                io.Int.Input("rollouts", default=16, min=1, max=1000,
                             tooltip="Images the teacher samples on the fine schedule; each step trains on one segment of one of them."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Teacher rollout r starts from the noise of seed + r; also seeds the LoRA init and the draws."),
                io.String.Input("save_name_slow", default="glance/distilled_slow",
                                tooltip="Slow expert's file name inside models/loras (.safetensors added); never overwrites."),
                io.String.Input("save_name_fast", default="glance/distilled_fast",
                                tooltip="Fast expert's file name inside models/loras (.safetensors added); never overwrites."),
                io.Float.Input("cfg_fast", default=SAME_AS_CFG, min=SAME_AS_CFG, max=100.0, step=0.1, round=0.01, optional=True,
                               tooltip="CFG the fast phase will sample with (1.0: the fast expert learns to need no negative "
                                       "pass); -1: same as cfg."),
                io.Int.Input("fine_steps", default=50, min=2, max=1000, optional=True,
                             tooltip="Steps of the teacher's schedule (its points plus every point of sigmas)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple", optional=True,
                               tooltip="Scheduler of the teacher's fine schedule (use the one the schedule was fitted on)."),
                io.Boolean.Input("gradient_checkpointing", default=True, optional=True,
                                 tooltip="Recompute each block's activations in the backward pass: much less memory, somewhat "
                                         "slower. FLUX always uses it."),
            ],
            outputs=[
                io.Model.Output("model_slow", display_name="model_slow", tooltip="Base + slow expert: connect to model_slow."),
                io.Model.Output("model_fast", display_name="model_fast", tooltip="Base + fast expert: connect to model_fast."),
                io.String.Output("slow_lora_name", display_name="slow_lora_name", tooltip="The slow expert's file in models/loras."),
                io.String.Output("fast_lora_name", display_name="fast_lora_name", tooltip="The fast expert's file in models/loras."),
                io.Image.Output("loss_plot", display_name="loss_plot", tooltip="Training loss per step: slow expert above, fast below."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, switch_sigma=None):
        if switch_sigma is not None and (problem := switch_sigma_problem(switch_sigma)):
            return problem
        return True

    @classmethod
    def execute(cls, model, positive, negative, cfg, latent_image, sigmas, switch_sigma, rank, learning_rate, steps,
                rollouts, seed, save_name_slow, save_name_fast, cfg_fast=SAME_AS_CFG, fine_steps=50, scheduler="simple",
                gradient_checkpointing=True) -> io.NodeOutput:
        recipe = detect_recipe(model)
        switch = validate_switch_sigma(switch_sigma)
        if rank == AUTO:
            rank = recipe.rank
        alpha = float(rank) * recipe.alpha / recipe.rank  # the recipe's scale alpha/rank
        if cfg_fast == SAME_AS_CFG:
            cfg_fast = cfg
        if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
            raise ValueError("sigmas: expected a SIGMAS schedule (e.g. from Glance Fit Schedule).")
        prompts = check_prompts(model, positive, negative)
        latent = single_empty_latent(model, latent_image)
        loras_dir = Path(folder_paths.get_folder_paths("loras")[0])
        name_slow, path_slow = resolve_save_path(save_name_slow, loras_dir)
        name_fast, path_fast = resolve_save_path(save_name_fast, loras_dir)
        if path_slow == path_fast:
            raise ValueError(f"save_name_fast: '{name_fast}' is the slow expert's name too; give the two experts different names.")
        ms = model.get_model_object("model_sampling")
        settings = DistillSettings(
            sigmas=tuple(float(s) for s in sigmas.detach().float().cpu()), switch_sigma=switch,
            teacher_sigmas=tuple(float(s) for s in fine_schedule(ms, scheduler, int(fine_steps))), cfg=float(cfg),
            cfg_fast=float(cfg_fast), rollouts=int(rollouts), steps=int(steps), rank=int(rank), alpha=alpha,
            learning_rate=float(learning_rate), seed=int(seed), target_modules=recipe.target_modules,
            block_lists=recipe.block_lists, gradient_checkpointing=bool(gradient_checkpointing) or recipe.inplace_blocks,
            weight_decay=recipe.weight_decay, activation_per_token=dict(recipe.activation_per_token),
            width_module=recipe.context_module)
        # FLUX's distilled guidance stays as the conditioning has it: the experts learn the model as it is sampled.

        bar = comfy.utils.ProgressBar(1, node_id=cls.hidden.unique_id if cls.hidden else None)
        log.info("Glance distill: %s, %d prompt(s), %d rollouts, schedule %s (switch %.4f), cfg %g/%g, rank %d, lr %g, "
                 "%d steps per expert", recipe.arch, len(prompts), settings.rollouts,
                 [round(s, 4) for s in settings.sigmas], switch, settings.cfg, settings.cfg_fast, settings.rank,
                 settings.learning_rate, settings.steps)
        if len(prompts) == 1:
            log.info("Glance distill: one prompt; the experts specialise in it and may land slightly further from the "
                     "model's fine run than the schedule alone on other prompts. For prompts in general, join several "
                     "with Conditioning (Combine) and give about 100 steps per prompt.")
        result = distill_experts(model, prompts, negative, latent, settings, recipe.arch,
                                 lambda done, total: bar.update_absolute(done, total))
        log.info("Glance distill: teacher %d model passes; loss slow %.5g -> %.5g, fast %.5g -> %.5g",
                 result.teacher_passes, *_first_last(result.losses["slow"]), *_first_last(result.losses["fast"]))

        experts, names = {}, {}
        resolution = latent_resolution(latent, model)
        for phase, name, path in (("slow", name_slow, path_slow), ("fast", name_fast, path_fast)):
            sd = comfy_lora_state_dict(result.adapters[phase], alpha)
            metadata = build_metadata(
                base_model=recipe.arch, model_class=type(model.model).__name__, resolution=resolution,
                optimizer=result.optimizer, precision=result.precision, final_loss=result.losses[phase][-1], prompts=len(prompts),
                **phase_settings(settings, phase))
            save_atomic(sd, path, metadata)
            experts[phase] = (lora_patches(model, sd, f"distilled {phase} expert '{name}'"), 1.0)
            names[phase] = name
        log.info("Glance distill: saved %s and %s", name_slow, name_fast)
        clones, _ = forward_expert_clones(model, experts)
        plot = torch.cat([plot_loss(result.losses["slow"], f"{recipe.arch} slow expert: distillation loss"),
                          plot_loss(result.losses["fast"], f"{recipe.arch} fast expert: distillation loss")], dim=1)
        return io.NodeOutput(clones["slow"], clones["fast"], names["slow"], names["fast"], plot,
                             ui=ui.PreviewImage(plot, cls=cls))


def _first_last(values: list[float]) -> tuple[float, float]:
    window = max(1, len(values) // 10)
    return sum(values[:window]) / window, sum(values[-window:]) / window
