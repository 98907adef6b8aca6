"""The trainer's memory estimate: the README's table is what the trainer computes for the full-size models and what
the paper's widths give by hand, and the recipes' activation coefficients still bound the measured ones."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import train_memory

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("one_thread")]
README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_memory_table_is_the_trainers_estimate_and_the_recipes(comfy):
    lines, problems = train_memory.table()
    assert not problems, problems  # the trainer's estimate == the recipe by hand
    readme = README.read_text(encoding="utf-8").splitlines()
    missing = [line for line in lines if line not in readme]
    assert not missing, f"README's memory table differs from `python benchmarks/train_memory.py`: {missing}"


@pytest.mark.parametrize("kind", ["flux", "qwen", "sd3", *train_memory.FAMILY_KINDS])
def test_recipe_activation_coefficients_bound_the_measured_ones(comfy, pack, kind):
    recipes, optim = pack("training.recipes"), pack("training.optim")
    from benchmarks import families as F

    try:
        recipe = {"flux": recipes.FLUX, "qwen": recipes.QWEN, "sd3": recipes.SD3}.get(kind) or recipes.detect_recipe(F.build(kind))
        measured = train_memory.measure_per_token(kind)
    except (F.Unsupported, optim.NotTrainableError) as e:
        pytest.skip(f"cannot be measured on this host: {e}")
    kept = dict(recipe.activation_per_token)
    assert measured.keys() == kept.keys()
    for name, a in measured.items():
        assert a <= kept[name], f"{recipe.arch} {name}: measured {a:.2f}, recipe {kept[name]}"
        if a >= 1.0:  # (a block list that sees the caption only, Lumina 2's context refiner, measures 0 per image token)
            assert kept[name] <= 1.5 * a, f"{recipe.arch} {name}: measured {a:.2f}, recipe {kept[name]}"


@pytest.mark.parametrize("kind", ["Wan 2.1", "LTXV"])
def test_estimate_bounds_the_measured_activations(comfy, kind):
    """The trainer's activation estimate for a training step without checkpointing (the model's own patch size:
    Wan 1x2x2, LTXV 1x1x1; the recipe's coefficients) against what autograd kept in that step (every saved tensor
    that is not a weight or a LoRA matrix, in the blocks and outside them; fp32 on the CPU), at two sizes small
    enough that the CPU attention's softmax (which CUDA's fused attention does not keep) stays a small share."""
    for size in (64, 128):
        run = train_memory.saved_per_block(kind, size)
        measured = sum(run["counts"].values()) * 4
        estimate = run["estimate"].activations
        assert measured <= estimate <= 2 * measured, f"{kind} at {size} px: estimate {estimate}, measured {measured}"


def test_estimate_counts_the_caption_tokens_the_model_sees(comfy, pack):
    """Flux.2 pads the caption to 512 tokens in its own conditioning (ComfyUI 0.33): the estimate counts those; a
    model that does not pad (Wan) keeps the caption's own tokens."""
    from benchmarks import families as F

    session = pack("training.session")
    wan = F.build("Wan 2.1")
    assert session.caption_tokens_seen(wan, 8, (1, 16, 1, 8, 8)) == 8
    try:
        flux2 = F.build("Flux.2")
    except F.Unsupported as e:
        pytest.skip(str(e))
    assert session.caption_tokens_seen(flux2, 8, (1, 128, 8, 8)) == 512
    assert train_memory.saved_per_block("Flux.2", 64)["tokens"] == 8 * 8 + 512  # 1x1 patches of the 8x8 latent
