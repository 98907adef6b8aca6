"""The reproduction's judges (benchmarks/repro/metrics.py): they must tell samples apart, not just run."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("sklearn", reason="the reproduction's judge needs scikit-learn: pip install scikit-learn")
from benchmarks.repro import data  # noqa: E402
from benchmarks.repro.metrics import DigitJudge, mse, psnr  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    images, labels = data.load_digits(size=32)
    train, test = data.split(labels)
    return images, labels, train, test


@pytest.fixture(scope="module")
def judge(digits):
    images, labels, train, _ = digits
    return DigitJudge(images[train], labels[train])


def test_psnr_and_mse():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full_like(a, 0.1)
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b, 1.0) == pytest.approx(20.0)
    assert psnr(a, a, 1.0) == math.inf


def test_judge_reads_held_out_real_digits(judge, digits):
    images, labels, _, test = digits
    assert judge.accuracy(images[test], labels[test]) > 0.9
    # Shuffled labels: chance level, so a high accuracy above means the judge reads the images.
    shuffled = labels[test][torch.randperm(len(test), generator=torch.Generator().manual_seed(0))]
    assert judge.accuracy(images[test], shuffled) < 0.3


def test_frechet_separates_sets(judge, digits):
    images, labels, _, test = digits
    held = images[test]
    assert judge.frechet(held, held) == 0.0
    half = len(held) // 2
    same_kind = judge.frechet(held[:half], held[half:])
    ones_only = judge.frechet(held[:half], images[test][labels[test] == 1])
    noise = judge.frechet(held[:half], torch.rand_like(held[:half]))
    assert 0 < same_kind < ones_only < noise
