"""Judging samples: PSNR/MSE against a reference, and a small emoji-category classifier trained here.

The classifier (a one-hidden-layer network on 8x8 colour thumbnails of the training emoji) gives category accuracy for
conditional samples and a feature space for a Frechet distance between sample sets (no downloaded weights).
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


def _flat(images: torch.Tensor, size: int) -> np.ndarray:
    """[N, 3, H, W] (or NHWC) images in [0, 1] -> [N, 3 * size * size] colour thumbnails (area-averaged)."""
    images = images.detach()
    if images.shape[-1] == 3:
        images = images.movedim(-1, 1)
    return torch.nn.functional.adaptive_avg_pool2d(images.float(), size).flatten(1).numpy()


class EmojiJudge:
    """A small classifier of the emoji category (9 classes: smileys, people, animals, food, travel, activities,
    objects, symbols, flags), trained here on the training emoji: its accuracy on samples says whether they look
    like their caption's category, and its hidden layer is the feature space for a Frechet distance.

    One hidden layer on 8x8 colour thumbnails, full-batch Adam with weight decay: about a second on a CPU."""

    def __init__(self, images: torch.Tensor, labels, seed: int = 0, size: int = 8, hidden: int = 128, steps: int = 300):
        self.size = size
        # Trained with autograd even when called under inference mode (as the reproduction runs): fresh tensors.
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.from_numpy(_flat(images, size)).clone()
            y = torch.as_tensor(np.asarray(labels), dtype=torch.long).clone()
            self.mean, self.std = x.mean(0), x.std(0) + 1e-3
            gen = torch.Generator().manual_seed(seed)
            self.hidden = torch.nn.Linear(x.shape[1], hidden)
            self.out = torch.nn.Linear(hidden, int(y.max()) + 1)
            with torch.no_grad():
                for layer in (self.hidden, self.out):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * layer.weight.shape[1] ** -0.5)
                    layer.bias.zero_()
            params = [*self.hidden.parameters(), *self.out.parameters()]
            opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2)
            xn = (x - self.mean) / self.std
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(self.out(torch.relu(self.hidden(xn))), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.hidden.requires_grad_(False)
        self.out.requires_grad_(False)

    def _hidden(self, images: torch.Tensor) -> torch.Tensor:
        x = (torch.from_numpy(_flat(images, self.size)) - self.mean) / self.std
        with torch.no_grad():
            return torch.relu(self.hidden(x))

    def predict(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.out(self._hidden(images)).argmax(-1).numpy()

    def accuracy(self, images: torch.Tensor, labels) -> float:
        return float(np.mean(self.predict(images) == np.asarray(labels)))

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self._hidden(images).double().numpy()

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
