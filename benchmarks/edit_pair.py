"""Does a Glance LoRA trained on an edit pair move sampling WITH that reference toward the target? A measured run.

Qwen-Image-Edit's path on a small Qwen-Image (benchmarks/families.py: the host's own QwenImage class, hidden 64,
random weights) with the host's tiny VAE of random weights: the reference ("before") image's latent rides in the
conditioning as ``reference_latents`` (what ReferenceLatent and TextEncodeQwenImageEdit(Plus) put there), the target
("after") image is what Glance Train LoRA learns. A Slow-LoRA (phase slow) and a Fast-LoRA (phase fast) are trained on
the pair, then sampled as the shipped workflow samples: Glance LoRA Loader + Glance Phase KSampler with the
``qwen_image_glance`` schedule (5 + 5 steps), cfg 1. Measured, in the model's latent space (the VAE latent after the
latent format's normalisation), averaged over several sampling seeds: the mean squared distance of the sampled latent
to the target image's latent, and their correlation (a distance can fall only because the samples shrink; the
correlation says whether they look more like the target), for:

- base model, with the reference (before training);
- the trained LoRAs, with the reference they were trained with;
- the trained LoRAs, with another image as the reference (does the learned result depend on the reference?);
- the trained LoRAs, with no reference at all;

and, for scale, the same for the reference's own latent and for a flat latent.

The pair: scikit-image's astronaut mirrored left-right is the reference, the astronaut itself the target (the edit
"mirror it"); the other reference is scikit-image's coffee cup. Images 64x64 px (latents 8x8), CPU, one thread.

    python benchmarks/edit_pair.py [--steps 60] [--learning-rate 1e-2] [--rank -1] [--seeds 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # `cli`; appended, so that the host's `nodes` module wins over the pack's folder
from cli.host import start_in_process  # noqa: E402
from benchmarks import families as F  # noqa: E402
from benchmarks import models as gm  # noqa: E402


def photo(name: str, size: int = 64) -> torch.Tensor:
    """A scikit-image photo as a ComfyUI IMAGE [1, size, size, 3] in 0..1."""
    import numpy as np
    from skimage import data

    img = torch.from_numpy(np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0)[None]
    return torch.nn.functional.interpolate(img.movedim(-1, 1), size=(size, size), mode="area").movedim(1, -1)


def encode(vae, image: torch.Tensor) -> torch.Tensor:
    """The image's latent in Qwen-Image's layout [B, 16, 1, h, w] (an image VAE's 4-D latent as one frame)."""
    with torch.inference_mode():
        latent = vae.encode(image)
    return (latent.unsqueeze(2) if latent.ndim == 4 else latent).float().clone()


def with_reference(conditioning, reference):
    if reference is None:
        return conditioning
    return [[c, {**extras, "reference_latents": [reference]}] for c, extras in conditioning]


def calibrated_vae(model, images: list[torch.Tensor]):
    """The host's tiny VAE (random weights, ``families.make_vae``) with its encoder's last convolution rescaled per
    channel so that these images' latents have the model's latent statistics (its latent format's mean and std):
    the model then sees unit-scale latents with the images' structure, as with its real VAE. (Uncalibrated, the
    random encoder's latents are about 0.08 in scale: after the format's normalisation every image is nearly the
    same constant latent.)"""
    vae = F.make_vae(model)
    last = [m for n, m in vae.first_stage_model.named_modules() if "encoder" in n and isinstance(m, torch.nn.Conv2d)][-1]
    fmt = model.model.latent_format
    want_mean = fmt.latents_mean.flatten().float()
    want_std = fmt.latents_std.flatten().float() / fmt.scale_factor
    latents = torch.cat([encode(vae, image) for image in images])
    mean, std = latents.mean(dim=(0, 2, 3, 4)), latents.std(dim=(0, 2, 3, 4))
    scale = want_std / std
    with torch.no_grad():
        last.weight.mul_(scale.view(-1, 1, 1, 1).to(last.weight.dtype))
        last.bias.copy_(((last.bias.float() - mean) * scale + want_mean).to(last.bias.dtype))
    return vae


class EditPair:
    """The small model, the VAE, the pair's latents and the caption: everything a run needs."""

    def __init__(self, nodes, side: int = 64):
        self.nodes = nodes
        self.model = F.build(F.QWEN_IMAGE)
        self.target_image = photo("astronaut", side)
        reference_image, other_image = self.target_image.flip(2), photo("coffee", side)  # "before": the target mirrored
        self.vae = calibrated_vae(self.model, [self.target_image, reference_image, other_image])
        self.reference = encode(self.vae, reference_image)
        self.other_reference = encode(self.vae, other_image)
        self.target = encode(self.vae, self.target_image)
        self.caption = F.conditioning(F.QWEN_IMAGE, 1)
        self.negative = F.conditioning(F.QWEN_IMAGE, 2)
        self.latent = F.empty_latent(self.model, side // 8)

    def train(self, phase: str, steps: int, learning_rate: float, rank: int, save_name: str) -> str:
        """One Glance Train LoRA run on the pair; the saved file's name."""
        return gm.run_node(
            self.nodes, "GlanceTrainLoRA", model=self.model, vae=self.vae, image=self.target_image,
            positive=with_reference(self.caption, self.reference), phase=phase, timesteps="", rank=rank,
            alpha=-1.0, learning_rate=learning_rate, steps=steps, seed=0, caption_dropout=0.0,
            gradient_checkpointing=True, save_name=save_name, resolution=self.target_image.shape[1])[1]

    def experts(self, slow: str | None, fast: str | None) -> tuple:
        """(model_slow, model_fast): the base model twice, or the trained pair through Glance LoRA Loader."""
        if slow is None:
            return self.model, self.model
        return gm.run_node(self.nodes, "GlanceLoraLoader", model=self.model, slow_lora=slow, strength_slow=1.0,
                           fast_lora=fast, strength_fast=1.0)[:2]

    def distance(self, experts: tuple, reference, seeds: int) -> tuple[float, float]:
        """(mean squared distance, correlation) to the target latent of Glance samples (qwen_image_glance, 5 + 5
        steps, cfg 1), in the model's latent space, averaged over ``seeds`` sampling seeds."""
        sigmas, switch = gm.run_node(self.nodes, "GlanceSigmas", model=experts[0], preset="qwen_image_glance",
                                     steps_slow=5, steps_fast=5, switch_sigma=0.9, scheduler="simple")[:2]
        total, correlation = 0.0, 0.0
        for seed in range(seeds):
            with torch.inference_mode():
                out = gm.run_node(self.nodes, "GlancePhaseKSampler", model_slow=experts[0], model_fast=experts[1],
                                  positive=with_reference(self.caption, reference), negative=self.negative,
                                  latent_image=self.latent, seed=seed, steps=10, switch_sigma=switch, cfg_slow=1.0,
                                  cfg_fast=1.0, sampler_name="euler", scheduler="simple", denoise=1.0, sigmas=sigmas)[0]
            total += self.to_target(out["samples"])
            correlation += self.correlation(out["samples"])
        return total / seeds, correlation / seeds

    def correlation(self, latent: torch.Tensor) -> float:
        """Pearson correlation of ``latent`` with the target over all latent values (model space)."""
        pair = torch.stack([self.in_model_space(latent).flatten(), self.in_model_space(self.target).flatten()])
        return float(torch.corrcoef(pair)[0, 1])

    def to_target(self, latent) -> float:
        """The distance of ``latent`` to the target (model space); None: of the target's channel means everywhere."""
        target = self.in_model_space(self.target)
        other = target.mean(dim=(2, 3, 4), keepdim=True) if latent is None else self.in_model_space(latent)
        return float(((other - target) ** 2).mean())

    def in_model_space(self, latent: torch.Tensor) -> torch.Tensor:
        """A VAE latent as the model sees it (its latent format's normalisation: unit scale per channel)."""
        return self.model.model.process_latent_in(latent.float())


def measure(nodes, steps: int, learning_rate: float, rank: int, seeds: int, tag: str = "bench") -> dict:
    pair = EditPair(nodes)
    before = pair.distance(pair.experts(None, None), pair.reference, seeds)
    slow = pair.train("slow", steps, learning_rate, rank, f"glance_edit_pair/{tag}_slow")
    fast = pair.train("fast", steps, learning_rate, rank, f"glance_edit_pair/{tag}_fast")
    experts = pair.experts(slow, fast)
    return {
        "the reference image's own latent": (pair.to_target(pair.reference), pair.correlation(pair.reference)),
        "a flat latent of the target's channel means": (pair.to_target(None), 0.0),
        "base model, with the reference": before,
        "trained LoRAs, with the reference": pair.distance(experts, pair.reference, seeds),
        "trained LoRAs, with another reference": pair.distance(experts, pair.other_reference, seeds),
        "trained LoRAs, no reference": pair.distance(experts, None, seeds),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps of each LoRA (the paper's 60)")
    ap.add_argument("--learning-rate", type=float, default=1e-2, help="(the paper's 3e-4 moves this model very little)")
    ap.add_argument("--rank", type=int, default=-1, help="-1: the Qwen-Image recipe's 32 (alpha: its 128)")
    ap.add_argument("--seeds", type=int, default=4, help="sampling seeds averaged per row")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import uuid

    nodes = start_in_process()
    try:
        from comfyui_version import __version__ as version
    except ImportError:
        version = "?"
    print(f"ComfyUI {version}; {args.steps} steps per LoRA, learning rate {args.learning_rate}, rank {args.rank}, "
          f"{args.seeds} sampling seeds; to the target latent (model space):")
    rows = measure(nodes, args.steps, args.learning_rate, args.rank, args.seeds, tag=uuid.uuid4().hex[:8])
    print(f"{'':45s} {'distance':>9s} {'correlation':>12s}")
    for name, (distance, correlation) in rows.items():
        print(f"{name:45s} {distance:9.4f} {correlation:12.3f}")


if __name__ == "__main__":
    main()
