"""The reproduction's judges (benchmarks/repro/metrics.py): they must tell samples apart, not just run."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.repro.metrics import EmojiJudge, mse, psnr
from cli import emoji_data


@pytest.fixture(scope="module")
def emoji():
    data = emoji_data.load()
    return data, data.indices(held_out=False), data.indices(held_out=True)


@pytest.fixture(scope="module")
def judge(emoji, one_thread):
    data, train, _ = emoji
    return EmojiJudge(data.tensor(train), data.category_ids(train))


def test_psnr_and_mse():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full_like(a, 0.1)
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b, 1.0) == pytest.approx(20.0)
    assert psnr(a, a, 1.0) == math.inf


def test_judge_reads_the_category_of_held_out_real_emoji(judge, emoji):
    data, _, held = emoji
    labels = data.category_ids(held)
    largest_class = max(labels.count(c) for c in set(labels)) / len(labels)
    assert judge.accuracy(data.tensor(held), labels) > largest_class + 0.3
    # Shuffled labels: about chance, so the accuracy above means the judge reads the images.
    shuffled = torch.tensor(labels)[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert judge.accuracy(data.tensor(held), shuffled.tolist()) < largest_class + 0.1


def test_frechet_separates_sets(judge, emoji):
    data, _, held = emoji
    images = data.tensor(held)
    assert judge.frechet(images, images) == pytest.approx(0.0, abs=1e-6)
    half = len(held) // 2
    same_kind = judge.frechet(images[:half], images[half:])
    flags_only = judge.frechet(images[:half], data.tensor([i for i in held if data.categories[i] == "Flags"]))
    noise = judge.frechet(images[:half], torch.rand_like(images[:half]))
    assert 0 < same_kind < flags_only < noise
