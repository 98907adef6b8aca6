"""GlanceDistillExperts: the Slow and the Fast expert distilled from the model's own fine-step sampling (prompts only)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..sampling import teacher
from ..sampling.forward_experts import forward_expert_clones
from ..sampling.lora_patches import lora_patches
from ..schedules.switch import EXPERTS, validate_switch_sigma
from ..training.job import DistillInputs, distill_job
from .common.folders import loras_dir
from .common.inputs import (AUTO, cfg_input, check_low_noise, check_prompts, gradient_checkpointing_input,
                            low_noise_inputs, rank_input, sampler_input, sampler_problem, scheduler_input, seed_input, single_empty_latent,
                            size_latent_input, switch_sigma_input, validate_inputs)
from .common.previews import plot_loss, with_preview
from .common.progress import NodeProgress


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
                "sampler_name runs the schedule from the same noise, and at each big step [s_i, s_k] the expert "
                "learns to make that sampler's step from the state it reached at s_i land on the fine run's x_k. "
                "Needs prompts only, no image. Both experts train in one model load and are saved into models/loras. "
                "With model_low_noise (e.g. Wan 2.2 A14B's two experts) the teacher is the pair, the slow expert a "
                "LoRA of 'model' and the fast one of model_low_noise."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model (never modified); it is also the teacher."),
                io.Conditioning.Input("positive", tooltip="One prompt, or a few joined with Conditioning (Combine): each entry is one "
                                                          "prompt and the teacher's rollouts take turns."),
                io.Conditioning.Input("negative", tooltip="The negative prompt you sample with (unused where cfg is 1.0)."),
                cfg_input("cfg", "CFG of the teacher and of the slow phase, as you will sample with them."),
                size_latent_input(),
                io.Sigmas.Input("sigmas", tooltip="The few-step schedule the experts will sample (e.g. Glance Fit Schedule's SIGMAS)."),
                switch_sigma_input("Steps starting above it are the slow expert's, the rest the fast expert's "
                                   "(connect the schedule's own switch_sigma)."),
                rank_input(),
                io.Float.Input("learning_rate", default=3e-5, min=0.0, max=1.0, step=0.00001, round=0.0000001,
                               tooltip="AdamW learning rate, constant. From one prompt, higher rates fit that prompt better and "
                                       "other prompts worse; with several prompts, up to about 1e-4."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimiser steps per expert."),
                io.Int.Input("rollouts", default=16, min=1, max=1000,
                             tooltip="Images the teacher samples on the fine schedule; each step trains on one segment of one of them. "
                                     "They take turns over the joined prompts: at least one per prompt."),
                seed_input("Teacher rollout r starts from the noise of seed + r; also seeds the LoRA init and the draws."),
                io.String.Input("save_name_slow", default="glance/distilled_slow",
                                tooltip="Slow expert's file name inside models/loras (.safetensors added); never overwrites."),
                io.String.Input("save_name_fast", default="glance/distilled_fast",
                                tooltip="Fast expert's file name inside models/loras (.safetensors added); never overwrites."),
                cfg_input("cfg_fast", "CFG the fast phase will sample with (1.0: the fast expert learns to need no negative "
                                      "pass); -1: same as cfg.", default=float(AUTO), low=float(AUTO), optional=True),
                io.Int.Input("fine_steps", default=teacher.FINE_STEPS, min=2, max=1000, optional=True,
                             tooltip="Steps of the teacher's schedule (its points plus every point of sigmas)."),
                scheduler_input("Scheduler of the teacher's fine schedule (use the one the schedule was fitted on).",
                                default=teacher.FINE_SCHEDULER, optional=True),
                gradient_checkpointing_input(optional=True),
                sampler_input("the experts learn on the states that sampler visits, through its own steps "
                              "(multistep history included)."),
                *low_noise_inputs(),
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
    def validate_inputs(cls, switch_sigma=None, sampler_name=None):
        return validate_inputs(switch_sigma, sampler_problem(sampler_name))

    @classmethod
    def execute(cls, model, positive, negative, cfg, latent_image, sigmas, switch_sigma, rank, learning_rate, steps,
                rollouts, seed, save_name_slow, save_name_fast, cfg_fast=AUTO, fine_steps=teacher.FINE_STEPS,
                scheduler=teacher.FINE_SCHEDULER, gradient_checkpointing=True, sampler_name="euler", model_low_noise=None,
                handover_sigma=0.875) -> io.NodeOutput:
        validate_switch_sigma(switch_sigma)
        if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1:
            raise ValueError("sigmas: expected a SIGMAS schedule (e.g. from Glance Fit Schedule).")
        prompts = check_prompts(model, positive, negative)
        latent = single_empty_latent(model, latent_image)
        check_low_noise(model_low_noise, positive, negative, latent)
        inputs = DistillInputs(
            sigmas=tuple(float(s) for s in sigmas.detach().float().cpu()), switch_sigma=switch_sigma, cfg=cfg,
            cfg_fast=cfg_fast, rank=rank, learning_rate=learning_rate, steps=steps, rollouts=rollouts, seed=seed,
            save_name_slow=save_name_slow, save_name_fast=save_name_fast, fine_steps=fine_steps, scheduler=scheduler,
            gradient_checkpointing=gradient_checkpointing, sampler_name=sampler_name,
            handover_sigma=None if model_low_noise is None else float(handover_sigma))
        outcome = distill_job(model, prompts, negative, latent, inputs, loras_dir(), NodeProgress(cls), model_low_noise)
        clones = _expert_clones({"slow": model, "fast": model if model_low_noise is None else model_low_noise},
                                outcome.loras, outcome.file_names)
        names, arch, losses = outcome.file_names, outcome.recipe.arch, outcome.result.losses
        plot = torch.cat([plot_loss(losses[e], f"{arch} {e} expert: distillation loss") for e in EXPERTS], dim=1)
        return with_preview(cls, clones["slow"], clones["fast"], names["slow"], names["fast"], plot, image=plot)


def _expert_clones(models: dict, loras: dict, names: dict) -> dict:
    """Each expert's model: its base (one shared by both, or the pair's own) with the expert applied in the forward
    pass (sampling/forward_experts.py)."""
    def patches(e):
        return lora_patches(models[e], loras[e], f"distilled {e} expert '{names[e]}'"), 1.0

    if models["slow"] is models["fast"]:
        return forward_expert_clones(models["slow"], {e: patches(e) for e in EXPERTS})[0]
    return {e: forward_expert_clones(models[e], {e: patches(e)})[0][e] for e in EXPERTS}
