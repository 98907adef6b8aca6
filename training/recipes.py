"""Per-architecture training recipes (the paper's defaults) and the phase timesteps they train on.

Timesteps follow the paper's convention t = 1000 * sigma, where sigma is the noise level of the flow
x_t = (1 - sigma) x0 + sigma noise, shift already applied. ComfyUI's flow models (CONST model sampling) use the
same sigma, whatever their shift or the timestep scale their network sees, so a paper t maps to sigma = t / 1000.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import comfy.model_base
import comfy.model_sampling
import comfy.samplers

from ..schedules.paper_timesteps import FAST_STEPS, FLUX_DEV, QWEN_IMAGE, SCHEDULE_STEPS, SLOW_STEPS

TRAIN_PHASES = ("slow", "fast", "custom")  # what GlanceTrainLoRA can train


@dataclass(frozen=True)
class Recipe:
    arch: str
    rank: int
    alpha: float
    learning_rate: float
    steps: int
    target_modules: tuple[str, ...]  # module-name suffixes (ComfyUI's native names) that get a LoRA
    block_lists: tuple[str, ...]  # ModuleList attributes whose blocks gradient checkpointing wraps
    slow_t: tuple[float, ...] | None  # None: taken from the model's own 50-step schedule
    fast_t: tuple[float, ...] | None
    weight_decay: float = 0.01
    resolution: int = 1024  # long side of the training image, as in the paper
    multiple: int = 32  # image sides are floored to this many pixels
    guidance: float | None = None  # FLUX's distilled guidance input during training (paper: 1)
    context_module: str | None = None  # Linear that takes the caption embedding (its in_features = width)
    pooled_module: str | None = None  # Linear that takes the pooled caption embedding, when required
    inplace_blocks: bool = False  # blocks add to inputs they saved for backward: only trainable with checkpointing
    # Saved activation elements per token per unit of hidden width of one block, per block list (training/memory.py;
    # measured on the small models by `python benchmarks/train_memory.py --calibrate`, rounded up with a margin).
    activation_per_token: tuple[tuple[str, float], ...] = ()


QWEN = Recipe(
    arch="Qwen-Image", rank=32, alpha=128.0, learning_rate=3e-4, steps=60,
    # The paper's 12 targets; ComfyUI's Qwen-Image uses the diffusers names natively.
    target_modules=("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                    "attn.to_out.0", "attn.to_add_out", "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1"),
    block_lists=("transformer_blocks",), slow_t=QWEN_IMAGE.slow, fast_t=QWEN_IMAGE.fast, weight_decay=0.0,
    context_module="txt_in", activation_per_token=(("transformer_blocks", 26.0),),
)
FLUX = Recipe(
    arch="FLUX.1", rank=16, alpha=64.0, learning_rate=5e-4, steps=60,
    # Diffusers to_q/to_k/to_v/to_out.0 in ComfyUI's native FLUX: the image stream's fused qkv and its output
    # projection in double blocks, and linear1 (fused qkv + MLP input) in single blocks.
    target_modules=("img_attn.qkv", "img_attn.proj", "linear1"),
    block_lists=("double_blocks", "single_blocks"), slow_t=FLUX_DEV.slow, fast_t=FLUX_DEV.fast, guidance=1.0,
    context_module="txt_in", pooled_module="vector_in.in_layer", inplace_blocks=True,
    activation_per_token=(("double_blocks", 17.0), ("single_blocks", 15.0)),
)
SD3 = Recipe(
    arch="SD3", rank=16, alpha=64.0, learning_rate=5e-4, steps=60,
    # Diffusers to_q/to_k/to_v/to_out.0 of SD3 are the image stream's attention: x_block.attn.qkv / proj.
    target_modules=("x_block.attn.qkv", "x_block.attn.proj"),
    block_lists=("joint_blocks",), slow_t=None, fast_t=None,
    context_module="context_embedder", pooled_module="y_embedder.mlp.0",
    activation_per_token=(("joint_blocks", 13.0),),
)
# Other flow models: attention projections under the diffusers and the ComfyUI-native names.
GENERIC = Recipe(
    arch="flow model", rank=16, alpha=64.0, learning_rate=5e-4, steps=60,
    target_modules=("to_q", "to_k", "to_v", "to_out.0", "attn.qkv", "attn.proj"),
    block_lists=(), slow_t=None, fast_t=None,
)


def detect_recipe(patcher) -> Recipe:
    """The recipe for the model in ``patcher``; a clear error for models that are not flow-matching models."""
    model = patcher.model
    model_sampling = patcher.get_model_object("model_sampling")
    if not isinstance(model_sampling, comfy.model_sampling.CONST):
        raise ValueError(
            f"model: Glance trains flow-matching models (Qwen-Image, FLUX.1, SD3 and other rectified-flow models); "
            f"this {type(model).__name__} model is not one (it is trained to predict noise, not a velocity). "
            "Load a flow-matching model."
        )
    if isinstance(model, comfy.model_base.QwenImage):
        return QWEN
    if isinstance(model, comfy.model_base.Flux):
        return FLUX
    if isinstance(model, comfy.model_base.SD3):
        return SD3
    return replace(GENERIC, arch=type(model).__name__)


def parse_timesteps(text: str) -> tuple[float, ...]:
    """Comma-separated t in 0..1000 (t = 1000 * sigma); a clear error naming the ``timesteps`` input."""
    values = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise ValueError(f"timesteps: '{part}' is not a number; give comma-separated t in 0..1000, e.g. '1000, 950, 900'.") from None
    if not values:
        raise ValueError("timesteps: phase is 'custom' but no timesteps were given; write e.g. '1000, 979, 957, 935, 911'.")
    bad = [v for v in values if not (0.0 < v <= 1000.0)]
    if bad:
        raise ValueError(f"timesteps: {bad} outside (0, 1000]; t = 1000 * sigma, so t = 0 would be a clean image.")
    return tuple(values)


def schedule_timesteps(model_sampling, steps: tuple[int, ...]) -> tuple[float, ...]:
    """t at the given 1-based steps of the model's own 50-step 'simple' schedule (its shift applied)."""
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", SCHEDULE_STEPS)
    return tuple(round(float(sigmas[s - 1]) * 1000.0, 4) for s in steps)


def phase_timesteps(recipe: Recipe, model_sampling, phase: str, custom: str = "") -> tuple[float, ...]:
    """The phase's training timesteps t (paper convention)."""
    if phase == "custom":
        return parse_timesteps(custom)
    if phase not in ("slow", "fast"):
        raise ValueError(f"phase: '{phase}' is not one of {TRAIN_PHASES}.")
    table = recipe.slow_t if phase == "slow" else recipe.fast_t
    if table is not None:
        return table
    return schedule_timesteps(model_sampling, SLOW_STEPS if phase == "slow" else FAST_STEPS)


def timesteps_to_sigmas(timesteps: tuple[float, ...], model_sampling) -> tuple[float, ...]:
    """sigma = t / 1000, kept inside the model's sigma range (its smallest sigma is above 0)."""
    lo, hi = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    return tuple(min(max(t / 1000.0, lo), hi) for t in timesteps)
