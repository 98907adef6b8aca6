"""Running the pack's nodes from tests the way the host runs them (their ``execute``), with small default inputs."""
from __future__ import annotations

import torch

from benchmarks import models as gm


def train(comfy, save_name, model=None, kind="flux", **overrides):
    """Glance Train LoRA on a small model (a small Flux by default) for 2 steps at 64 px; ``overrides`` replace inputs."""
    args = dict(model=model or gm.make_flux(), vae=gm.make_tiny_vae(), image=gm.sample_image(64),
                positive=gm.conditioning(kind, 1), phase="slow", timesteps="", rank=4, alpha=8.0, learning_rate=1e-3,
                steps=2, seed=0, caption_dropout=0.0, gradient_checkpointing=False, save_name=save_name, resolution=64)
    args.update(overrides)
    with torch.inference_mode():
        return comfy.NODE_CLASS_MAPPINGS["GlanceTrainLoRA"].execute(**args).args
