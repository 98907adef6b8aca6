"""The settings of a LoRA run: one type, shared by the one-image trainer and the expert distiller.

``LoraSettings`` holds what every run has (the adapters, the optimiser, the memory plan's constants);
``TrainSettings`` and ``DistillSettings`` add what only their run has.
"""
from __future__ import annotations

from dataclasses import dataclass, field

AUTO = -1  # an input's "the architecture's default" (rank, alpha, learning_rate, steps; cfg_fast: same as cfg)


@dataclass(kw_only=True)
class LoraSettings:
    sigmas: tuple[float, ...]  # trainer: the phase's sigmas; distiller: the coarse schedule the experts sample, ending at 0
    target_modules: tuple[str, ...]
    rank: int
    alpha: float
    learning_rate: float
    steps: int  # optimiser steps (per expert for the distiller)
    seed: int
    gradient_checkpointing: bool = True
    block_lists: tuple[str, ...] = ()
    weight_decay: float = 0.01
    activation_per_token: dict[str, float] = field(default_factory=dict)  # recipe's c_block per block list
    width_module: str | None = None  # a Linear whose out_features is the model's hidden width

    @classmethod
    def for_recipe(cls, recipe, **fields):
        """Settings with the recipe's targets, block lists, weight decay and memory constants (training/recipes.py);
        gradient checkpointing stays on where the recipe's blocks need it."""
        fields["gradient_checkpointing"] = bool(fields.get("gradient_checkpointing", True)) or recipe.inplace_blocks
        return cls(target_modules=recipe.target_modules, block_lists=recipe.block_lists, weight_decay=recipe.weight_decay,
                   activation_per_token=dict(recipe.activation_per_token), width_module=recipe.context_module, **fields)


@dataclass(kw_only=True)
class TrainSettings(LoraSettings):
    caption_dropout: float = 0.0


@dataclass(kw_only=True)
class DistillSettings(LoraSettings):
    switch_sigma: float
    teacher_sigmas: tuple[float, ...]  # the teacher's fine schedule: contains every coarse point
    cfg: float  # the teacher's and the slow phase's CFG scale
    cfg_fast: float
    rollouts: int
    handover_sigma: float | None = None  # with a pair of models: where they hand over (None: one model)
    sampler: str = "euler"  # the sampler the experts will run (schedules/sampler_steps.py models its steps)
    refresh: int = 25  # optimiser steps between two rolls of the sampler with the current expert (0: roll once)
