"""The loss curve as an IMAGE tensor (Pillow only): per-step loss and its running mean."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

RAW_COLOR = (120, 150, 200)
MEAN_COLOR = (235, 120, 40)


def plot_loss(losses: list[float], title: str = "", size=(512, 320), window: int = 8) -> torch.Tensor:
    """[1,H,W,3] float image in 0..1."""
    w, h = size
    left, right, top, bottom = 56, 16, 30, 36
    img = Image.new("RGB", size, (24, 24, 28))
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, w - right, h - bottom], outline=(90, 90, 100))
    draw.text((left, 8), title or "training loss", fill=(220, 220, 225))
    values = [float(v) for v in losses]
    if values:
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        n = max(len(values) - 1, 1)

        def xy(i, v):
            return (left + (w - left - right) * i / n, top + (h - top - bottom) * (1 - (v - lo) / span))

        means = [float(np.mean(values[max(0, i - window + 1): i + 1])) for i in range(len(values))]
        for series, color, width in ((values, RAW_COLOR, 1), (means, MEAN_COLOR, 2)):
            points = [xy(i, v) for i, v in enumerate(series)]
            if len(points) > 1:
                draw.line(points, fill=color, width=width)
            else:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=color)
        draw.text((4, top - 6), f"{hi:.4g}", fill=(170, 170, 180))
        draw.text((4, h - bottom - 6), f"{lo:.4g}", fill=(170, 170, 180))
        draw.text((left, h - bottom + 8), "step 1", fill=(170, 170, 180))
        draw.text((w - right - 60, h - bottom + 8), f"step {len(values)}", fill=(170, 170, 180))
        draw.text((w // 2 - 40, h - bottom + 8), f"mean of last {window}", fill=MEAN_COLOR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
