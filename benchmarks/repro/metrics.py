"""Judging samples: PSNR/MSE against a reference, and a small digit classifier trained here on real digits.

The classifier (scikit-learn MLP on 8x8 downsampled images) gives class accuracy for conditional samples
and a feature space for a Frechet distance between sample sets (no downloaded weights).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.mean((a.float() - b.float()) ** 2).item()


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float) -> float:
    """PSNR in dB for a signal of range ``peak`` (per-image MSE averaged first, as one number per set)."""
    m = mse(a, b)
    return float("inf") if m == 0 else 10 * math.log10(peak ** 2 / m)


def _flat8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, 32, 32] (or NHWC) images in [0, 1] -> [N, 64] grey 8x8."""
    images = images.detach()
    if images.shape[-1] == 3:
        images = images.movedim(-1, 1)
    grey = images.float().mean(dim=1, keepdim=True)
    return torch.nn.functional.adaptive_avg_pool2d(grey, 8).flatten(1).numpy()


class DigitJudge:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=seed)
        self.clf.fit(_flat8(images), labels.numpy())

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return self.clf.predict(_flat8(images))

    def accuracy(self, images: torch.Tensor, labels) -> float:
        return float(np.mean(self.predict(images) == np.asarray(labels)))

    def features(self, images: torch.Tensor) -> np.ndarray:
        x = _flat8(images)
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def frechet(self, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
        return frechet_distance(self.features(images_a), self.features(images_b))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    # A small ridge keeps the square root defined when features are constant over a set (as usual for FID).
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = covmean.real
    # Identical sets give a tiny negative number from sqrtm's rounding: a distance is never below 0.
    return max(0.0, float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean)))
