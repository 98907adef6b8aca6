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


@pytest.mark.parametrize("kind", ["flux", "qwen", "sd3"])
def test_recipe_activation_coefficients_bound_the_measured_ones(comfy, pack, kind):
    recipes = pack("training.recipes")
    recipe = {"flux": recipes.FLUX, "qwen": recipes.QWEN, "sd3": recipes.SD3}[kind]
    measured = train_memory.measure_per_token(kind)
    kept = dict(recipe.activation_per_token)
    assert measured.keys() == kept.keys()
    for name, a in measured.items():
        assert a <= kept[name] <= 1.5 * a, f"{recipe.arch} {name}: measured {a:.2f}, recipe {kept[name]}"
