"""Per-architecture training recipes (the paper's defaults) and the phase timesteps they train on.

Timesteps follow the paper's convention t = 1000 * sigma, where sigma is the noise level of the flow
x_t = (1 - sigma) x0 + sigma noise, shift already applied. ComfyUI's flow models (CONST model sampling) use the
same sigma, whatever their shift or the timestep scale their network sees, so a paper t maps to sigma = t / 1000.
Cosmos Predict2 is a rectified-flow model too, sampled in EDM sigma (x = x0 + sigma noise, the network sees
x / (1 + sigma)): its flow time is t = sigma / (1 + sigma) (``flow_time``), and t maps to sigma = t / (1 - t).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

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


def _attention(arch: str, targets: tuple[str, ...], blocks: tuple[str, ...], per_token: tuple[float, ...],
               context: str | None = None, pooled: str | None = None, inplace: bool = False) -> Recipe:
    """A family the paper has no recipe for: LoRA on its attention projections (the host's own layer names), the
    FLUX/SD3 defaults (rank 16, alpha 64 = 4 x rank as the Glance authors train, lr 5e-4, 60 steps), phase
    timesteps from the model's own 50-step schedule; ``per_token``: the activation coefficient of each block list
    (measured as for the paper's recipes)."""
    return Recipe(arch=arch, rank=16, alpha=64.0, learning_rate=5e-4, steps=60, target_modules=targets,
                  block_lists=blocks, slow_t=None, fast_t=None, context_module=context, pooled_module=pooled,
                  inplace_blocks=inplace, activation_per_token=tuple(zip(blocks, per_token)))


# FLUX-style double/single-stream blocks (FLUX.1's layout; the image stream's fused qkv and output, and linear1).
_FLUX_STYLE = ("img_attn.qkv", "img_attn.proj", "linear1")
FLUX2 = _attention("Flux.2", _FLUX_STYLE, ("double_blocks", "single_blocks"), (23.0, 21.0), context="txt_in", inplace=True)
CHROMA = _attention("Chroma", _FLUX_STYLE, ("double_blocks", "single_blocks"), (17.0, 15.0), context="txt_in", inplace=True)
HUNYUAN_VIDEO = _attention("HunyuanVideo", _FLUX_STYLE, ("double_blocks", "single_blocks"), (17.0, 15.0),
                           context="txt_in.input_embedder", pooled="vector_in.in_layer", inplace=True)
HUNYUAN_IMAGE = _attention("HunyuanImage 2.1", _FLUX_STYLE, ("double_blocks", "single_blocks"), (17.0, 15.0),
                           context="txt_in.input_embedder", inplace=True)
# AuraFlow: the joint attention's projections (w1*: the caption stream in double layers, the joint stream in single
# layers; w2*: the image stream).
AURAFLOW = _attention("AuraFlow", tuple(f"attn.w{i}{p}" for i in (1, 2) for p in "qkvo"), ("double_layers", "single_layers"),
                      (25.0, 26.0), context="cond_seq_linear")
# Lumina 2 and Z-Image (NextDiT): fused qkv and output of every attention, refiners included.
# The context refiner sees the caption's tokens only (its measured coefficient per image token is 0): it is given
# the noise refiner's, which bounds it.
LUMINA2 = _attention("Lumina2", ("attention.qkv", "attention.out"), ("noise_refiner", "context_refiner", "layers"),
                     (29.0, 29.0, 29.0), context="cap_embedder.1")
Z_IMAGE = replace(LUMINA2, arch="Z-Image")
# HiDream: the image stream's attention (attn1.to_* ; the caption stream's are to_*_t).
HIDREAM = _attention("HiDream", ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out"),
                     ("double_stream_blocks", "single_stream_blocks"), (56.0, 57.0), pooled="p_embedder.pooled_embedder.linear_1")
# Wan 2.1 / 2.2: self- and cross-attention projections (diffusers' to_q/k/v/to_out.0 of attn1 and attn2).
_WAN = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo")
WAN = _attention("Wan", _WAN, ("blocks",), (20.0,), context="text_embedding.0")
# LTXV uses the diffusers names natively (attn1: self, attn2: cross).
LTXV = _attention("LTXV", ("to_q", "to_k", "to_v", "to_out.0"), ("transformer_blocks",), (20.0,),
                  context="caption_projection.linear_1")
# Cosmos Predict2: self- and cross-attention projections.
COSMOS_PREDICT2 = _attention("Cosmos Predict2", tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn")
                                                       for p in ("q_proj", "k_proj", "v_proj", "output_proj")), ("blocks",),
                             (45.0,))  # measured on ComfyUI 0.3.64 (0.33 cannot train it)

# The host's model classes (comfy.model_base) -> recipe. A class not listed takes the recipe of the nearest listed
# class it derives from (e.g. FluxInpaint -> FLUX.1, WAN21_Vace -> Wan); names, not imports, so that a host without
# a family still loads the pack. Model config classes that share a model class tell the families apart.
RECIPES = {"QwenImage": QWEN, "Flux": FLUX, "Flux2": FLUX2, "Chroma": CHROMA, "SD3": SD3, "AuraFlow": AURAFLOW,
           "Lumina2": LUMINA2, "HiDream": HIDREAM, "HunyuanVideo": HUNYUAN_VIDEO, "HunyuanImage21": HUNYUAN_IMAGE,
           "WAN21": WAN, "LTXV": LTXV, "CosmosPredict2": COSMOS_PREDICT2}
BY_CONFIG = {"ZImage": Z_IMAGE, "WAN22_T2V": replace(WAN, arch="Wan 2.2 5B")}
# Velocity-predicting model samplings: rectified flow in sigma (CONST) and Cosmos' rectified flow in EDM sigma.
FLOW_SAMPLINGS = ("CONST", "COSMOS_RFLOW")


def is_flow(model_sampling) -> bool:
    return any(c.__name__ in FLOW_SAMPLINGS for c in type(model_sampling).__mro__)


def flow_time(model_sampling, sigma):
    """The flow time t (x_t = (1 - t) x0 + t noise) at the sampler's ``sigma``: t = sigma for rectified-flow models,
    t = sigma / (1 + sigma) for Cosmos' (the host's COSMOS_RFLOW samples x = x0 + sigma noise in EDM sigma)."""
    if any(c.__name__ == "COSMOS_RFLOW" for c in type(model_sampling).__mro__):
        return sigma / (1.0 + sigma)
    return sigma


def sampler_sigma(model_sampling, t: float) -> float:
    """The sampler's sigma at flow time ``t`` (the inverse of ``flow_time``)."""
    if any(c.__name__ == "COSMOS_RFLOW" for c in type(model_sampling).__mro__):
        return t / (1.0 - t) if t < 1.0 else float("inf")
    return t


def detect_recipe(patcher) -> Recipe:
    """The recipe for the model in ``patcher``; a clear error for models that are not flow-matching models and for
    flow families the trainer has no recipe for."""
    model = patcher.model
    model_sampling = patcher.get_model_object("model_sampling")
    if not is_flow(model_sampling):
        raise ValueError(
            f"model: Glance trains flow-matching models (models that predict a velocity: Qwen-Image, FLUX, Wan...); "
            f"this {type(model).__name__} model is not one (it is trained to predict noise, not a velocity). "
            "Load a flow-matching model."
        )
    config = getattr(model, "model_config", None)
    for cls in type(config).__mro__ if config is not None else ():
        if cls.__name__ in BY_CONFIG:
            return BY_CONFIG[cls.__name__]
    for cls in type(model).__mro__:
        if cls.__name__ in RECIPES:
            return RECIPES[cls.__name__]
    raise ValueError(
        f"model: Glance's trainer has no LoRA recipe for this {type(model).__name__} model (model config "
        f"{type(config).__name__}); it trains {', '.join(sorted({r.arch for r in RECIPES.values()} | {'Z-Image'}))}. "
        "Glance Phase KSampler, Glance Sigmas and Glance Fit Schedule work with it; training does not."
    )


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
    return tuple(round(float(flow_time(model_sampling, sigmas[s - 1])) * 1000.0, 4) for s in steps)


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
    """The sampler's sigma at flow time t / 1000 (sigma = t / 1000 for rectified-flow models), kept inside the
    model's sigma range (its smallest sigma is above 0)."""
    lo, hi = float(model_sampling.sigma_min), float(model_sampling.sigma_max)
    return tuple(min(max(sampler_sigma(model_sampling, t / 1000.0), lo), hi) for t in timesteps)
