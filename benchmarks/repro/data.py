"""Real images from a registry package: scikit-learn's handwritten digits, as 64x64 RGB in [0, 1]."""
from __future__ import annotations

import torch

IMAGE_SIZE = 64
PROMPT = "a handwritten digit {}"


def load_digits(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ([N, 3, size, size] float in [0, 1], white on black; [N] int labels)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise RuntimeError("scikit-learn is needed for the digits data: pip install scikit-learn") from e
    digits = sk_load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return big.clamp(0, 1).expand(-1, 3, -1, -1).contiguous(), torch.tensor(digits.target, dtype=torch.long)


def split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed train / test indices (every fifth image is test)."""
    idx = torch.arange(len(labels))
    return idx[idx % 5 != 0], idx[idx % 5 == 0]


def prompt(label: int) -> str:
    return PROMPT.format(int(label))
