"""GlanceTrainLoRA: train a Slow- or Fast-LoRA from one image and its caption, save it into models/loras.

The node maps its inputs and shows progress and the loss curve; the job itself (defaults, checks, encode, the run,
the file) is ``training/job.py``.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..sampling.lora_patches import lora_patches
from ..training.job import TrainInputs, train_job
from ..training.recipes import TRAIN_PHASES
from .common.folders import loras_dir
from .common.inputs import AUTO, gradient_checkpointing_input, rank_input, seed_input
from .common.previews import plot_loss, with_preview
from .common.progress import NodeProgress


class GlanceTrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlanceTrainLoRA",
            display_name="Glance Train LoRA (one image)",
            category="training/glance",
            description=(
                "Trains a Glance Slow-LoRA (phase 'slow': the first, high-noise steps) or Fast-LoRA (phase 'fast') "
                "from ONE image and its caption, as in the paper: a few timesteps of the model's schedule, "
                "flow-matching velocity loss, about 60 steps. Saves it into models/loras and returns the model with "
                "the LoRA applied. Supports Qwen-Image, FLUX.1, Flux.2, Chroma, SD3, AuraFlow, Lumina 2, Z-Image, HiDream, "
                "HunyuanImage 2.1, HunyuanVideo, Wan 2.1/2.2, LTXV and Cosmos Predict2 (see the README's table)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base flow-matching model (Qwen-Image, FLUX.1, SD3...). It is never modified."),
                io.Vae.Input("vae", tooltip="The model's VAE; the image is encoded once."),
                io.Image.Input("image", tooltip="ONE training image (RGB; grayscale is repeated to RGB, alpha dropped)."),
                io.Conditioning.Input("positive", tooltip="The image's caption, encoded with the model's text encoder."),
                io.Combo.Input("phase", options=list(TRAIN_PHASES), default="slow",
                               tooltip="slow: the paper's 5 early timesteps; fast: its 5 late ones; custom: the 'timesteps' below."),
                io.String.Input("timesteps", default="", multiline=False,
                                tooltip="custom phase only: comma-separated t in (0, 1000], t = 1000 * sigma (shift already applied)."),
                rank_input(),
                io.Float.Input("alpha", default=AUTO, min=AUTO, max=4096.0, step=1.0,
                               tooltip="LoRA alpha (scale alpha/rank, saved in the file); -1: default (Qwen-Image 128, the others 64)."),
                io.Float.Input("learning_rate", default=AUTO, min=AUTO, max=1.0, step=0.00001, round=0.0000001,
                               tooltip="AdamW learning rate, constant; -1: default (Qwen-Image 3e-4, the others 5e-4)."),
                io.Int.Input("steps", default=AUTO, min=AUTO, max=100000, tooltip="Optimiser steps; -1: the paper's 60."),
                seed_input("Seeds LoRA init, timestep choice, noise and caption dropout: same seed, same LoRA."),
                io.Float.Input("caption_dropout", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Chance per step to train with an all-zero caption (paper: 0.1)."),
                gradient_checkpointing_input(),
                io.String.Input("save_name", default="glance/glance_slow_lora",
                                tooltip="File name inside models/loras (subfolders allowed, .safetensors added); never overwrites."),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=32,
                             tooltip="Long side of the training image in pixels (paper: 1024); sides are floored to multiples of 32."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The base model with the trained LoRA applied (as LoraLoaderModelOnly would)."),
                io.String.Output(display_name="lora_name", tooltip="The saved file's name in models/loras."),
                io.Image.Output(display_name="loss_plot", tooltip="The training loss per step (also previewed on the node)."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, vae, image, positive, phase, timesteps, rank, alpha, learning_rate, steps, seed,
                caption_dropout, gradient_checkpointing, save_name, resolution=1024) -> io.NodeOutput:
        inputs = TrainInputs(phase=phase, timesteps=timesteps, rank=rank, alpha=alpha, learning_rate=learning_rate,
                             steps=steps, seed=seed, caption_dropout=caption_dropout,
                             gradient_checkpointing=gradient_checkpointing, save_name=save_name, resolution=resolution)
        progress = NodeProgress(cls)
        outcome = train_job(model, vae, image, positive, inputs, loras_dir(),
                            lambda step, loss, sigma, total: progress(step + 1, total))
        patched = model.clone()
        patched.add_patches(lora_patches(model, outcome.lora, f"trained LoRA '{outcome.file_name}'"), 1.0)
        plot = plot_loss(outcome.result.losses, f"{outcome.recipe.arch} {outcome.phase}-LoRA loss")
        return with_preview(cls, patched, outcome.file_name, plot, image=plot)
