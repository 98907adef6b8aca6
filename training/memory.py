"""The memory a training run needs on its device, worked out before anything is loaded, and the checks made with it.

    weights      the model as the host loads it (its own size: 1 byte per parameter in fp8, 2 in bf16/fp16, 4 in fp32)
    lora         the LoRA matrices, fp32: rank * (in + out) per target layer
    gradients    fp32, one per LoRA parameter
    optimiser    AdamW: two fp32 moments per LoRA parameter (8 bytes); bitsandbytes' AdamW8bit: two 8-bit moments
                 (2 bytes) plus its block statistics
    activations  what autograd keeps for the backward pass at this resolution:
                 without checkpointing, every block's saved tensors: sum over blocks of c_block * tokens * width;
                 with checkpointing, each block's input (tokens * width per block) plus one block recomputed at a time;
                 plus one block's worth for the gradients in flight during the backward pass, and the layers outside
                 the blocks (embeddings, final layer: 2 * tokens * width).

``c_block`` (saved elements per token per unit of width, LoRA terms included) is measured for each architecture on
the small test models (``benchmarks/train_memory.py --calibrate``, the same forward the trainer runs) and kept in
the recipe; tests re-measure it on each host. Tokens are the latent's patches under the model's own patch size (FLUX,
Qwen-Image, SD3, Lumina 2: 2x2; Wan, HunyuanVideo, Cosmos: 1x2x2 over [T, h, w]; Flux.2, HunyuanImage 2.1: 1x1; LTXV:
1x1x1; ``patch_size``) plus the caption's tokens; width is the model's hidden size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GIB = 1024 ** 3
DEFAULT_PATCH = (2, 2)  # for a model that declares no patch size (FLUX, Qwen-Image and SD3 take 2x2 patches)
OUTSIDE_BLOCKS = 2.0  # tokens * width elements kept by the layers outside the blocks
GENERIC_PER_TOKEN = 60.0  # c_block for a block list without a measured value (above every measured one: HiDream 50)
OPTIMIZER_BYTES = {"AdamW": 8.0, "AdamW8bit": 2.0 + 8.0 / 256}  # per parameter: two moments (+ 8-bit block absmax)


@dataclass(frozen=True)
class BlockList:
    name: str
    blocks: int
    per_token: float  # c_block: saved elements per token per unit of width, without checkpointing


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    lora: int
    gradients: int
    optimizer: int
    activations: int
    lora_params: int
    tokens: int
    width: int
    checkpointing: bool
    optimizer_name: str

    @property
    def training(self) -> int:
        """Everything beside the weights: what the host is asked to keep free next to the loaded model."""
        return self.lora + self.gradients + self.optimizer + self.activations

    @property
    def total(self) -> int:
        return self.weights + self.training

    def rows(self) -> list[tuple[str, int]]:
        return [("weights", self.weights), ("LoRA parameters (fp32)", self.lora), ("gradients (fp32)", self.gradients),
                (f"optimiser state ({self.optimizer_name})", self.optimizer),
                ("activations (" + ("checkpointed" if self.checkpointing else "no checkpointing") + ")", self.activations),
                ("total", self.total)]


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def lora_parameter_count(shapes: list[tuple[int, int]], rank: int) -> int:
    """LoRA parameters for target layers of shape (in, out) at ``rank``."""
    return sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes)


def patch_size(dm) -> tuple[int, ...]:
    """The diffusion model's latent patch, over the latent's last dimensions ([h, w] or [T, h, w]), as the host's
    model declares it: ``patch_size`` (an int p: p x p; a sequence: one per dimension, e.g. Wan's (1, 2, 2)), Cosmos'
    ``patch_temporal`` and ``patch_spatial``, or LTXV's patchifier's; ``DEFAULT_PATCH`` where it declares none."""
    size = getattr(dm, "patch_size", None)
    if size is None and getattr(dm, "patch_spatial", None) is not None:
        size = (getattr(dm, "patch_temporal", 1), dm.patch_spatial, dm.patch_spatial)
    if size is None:
        size = getattr(getattr(dm, "patchifier", None), "patch_size", None)
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and size and all(isinstance(p, int) and p > 0 for p in size):
        return tuple(size)
    return DEFAULT_PATCH


def image_tokens(latent_shape, patch: tuple[int, ...] = DEFAULT_PATCH) -> int:
    """Patches of a [B, C, (T,) h, w] latent under ``patch`` (over its last dimensions; a partial patch pads to a
    whole one, as the models pad)."""
    dims = list(latent_shape[2:])
    patch = tuple(patch)[-len(dims):]
    covered = [math.ceil(d / p) for d, p in zip(dims[len(dims) - len(patch):], patch)]
    return int(latent_shape[0] * math.prod(dims[:len(dims) - len(patch)]) * math.prod(covered))


def activation_elements(blocks: list[BlockList], tokens: int, width: int, checkpointing: bool) -> float:
    per_block = [b.per_token for b in blocks for _ in range(b.blocks)]
    if not per_block:
        return 0.0
    busiest = max(per_block)
    if checkpointing:
        kept = (len(per_block) + 1) + busiest  # each block's input (and the last output) + one block recomputed
    else:
        kept = sum(per_block)
    return (kept + busiest + OUTSIDE_BLOCKS) * tokens * width


def estimate(*, weights: int, layer_shapes: list[tuple[int, int]], rank: int, blocks: list[BlockList], tokens: int,
             width: int, activation_bytes: int, checkpointing: bool, optimizer_name: str) -> MemoryEstimate:
    params = lora_parameter_count(layer_shapes, rank)
    acts = activation_elements(blocks, tokens, width, checkpointing) * activation_bytes
    return MemoryEstimate(
        weights=int(weights), lora=params * 4, gradients=params * 4,
        optimizer=int(math.ceil(params * OPTIMIZER_BYTES[optimizer_name])), activations=int(math.ceil(acts)),
        lora_params=params, tokens=tokens, width=width, checkpointing=checkpointing, optimizer_name=optimizer_name,
    )


def lowering_advice(est: MemoryEstimate) -> str:
    tips = ["a lower 'resolution' (activations grow with the pixel count)",
            "a lower 'rank' (LoRA parameters, gradients and optimiser state grow with it)"]
    if not est.checkpointing:
        tips.insert(0, "'gradient_checkpointing' on")
    tips.append("the model's weights stored in fp8 (half the memory of bf16)")
    return "; ".join(tips)


def breakdown(est: MemoryEstimate) -> str:
    return ", ".join(f"{name} {gib(n)}" for name, n in est.rows())


class NotEnoughMemory(RuntimeError):
    pass


def check_fits(est: MemoryEstimate, device: torch.device, total_memory: int, reserved: int) -> None:
    """Refuse before anything is loaded when the device cannot hold the whole run."""
    if est.total + reserved > total_memory:
        raise NotEnoughMemory(
            f"Training needs about {gib(est.total + reserved)} on {device} and it has {gib(total_memory)} "
            f"({breakdown(est)}, plus {gib(reserved)} the host keeps in reserve). Lower it with: {lowering_advice(est)}. "
            "Nothing was trained or saved."
        )


def check_full_load(patcher, est: MemoryEstimate, device: torch.device) -> None:
    """The trainer keeps the whole model on the device: a partly loaded model streams weights through buffers that the
    host reuses for the next layer, which the backward pass would then read."""
    if getattr(patcher.model, "model_lowvram", False):
        raise NotEnoughMemory(
            f"Only part of the model fits on {device} next to the training state; training needs all of it there "
            f"(about {gib(est.total)}: {breakdown(est)}). Free memory on the device (close other jobs, or start the "
            f"host with less reserved), or lower it with: {lowering_advice(est)}. Nothing was trained or saved."
        )
