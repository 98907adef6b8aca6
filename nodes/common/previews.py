"""The nodes' preview images (Pillow only), as IMAGE tensors: the sigma schedule with the switch marked, the loss curve."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw

SLOW_COLOR = (70, 130, 230)
FAST_COLOR = (235, 120, 40)
REFERENCE_COLOR = (120, 120, 130)
RAW_COLOR = (120, 150, 200)
MEAN_COLOR = (235, 120, 40)


def plot_sigmas(sigmas: torch.Tensor, switch_sigma: float, title: str = "", size=(512, 320),
                reference: torch.Tensor | None = None, reference_label: str = "") -> torch.Tensor:
    """Sigma per step: slow-phase points blue, fast-phase orange, the switch sigma a dashed line. [1,H,W,3] in 0..1.

    ``reference``: another schedule with the same number of steps, drawn grey behind it (e.g. the plain one)."""
    w, h = size
    left, right, top, bottom = 48, 16, 30, 36
    img = Image.new("RGB", size, (24, 24, 28))
    draw = ImageDraw.Draw(img)
    values = [float(s) for s in sigmas]
    steps = max(len(values) - 1, 1)
    ref_values = [float(s) for s in reference] if reference is not None else []
    top_sigma = max(max(values), switch_sigma, *ref_values, 1e-6)

    def xy(i, s):
        return (left + (w - left - right) * i / steps, top + (h - top - bottom) * (1 - s / top_sigma))

    draw.rectangle([left, top, w - right, h - bottom], outline=(90, 90, 100))
    for frac in (0.0, 0.5, 1.0):
        y = xy(0, frac * top_sigma)[1]
        draw.text((4, y - 6), f"{frac * top_sigma:.2f}", fill=(170, 170, 180))
    y_switch = xy(0, switch_sigma)[1]
    for x in range(left, w - right, 10):
        draw.line([(x, y_switch), (x + 5, y_switch)], fill=(220, 60, 60), width=1)
    draw.text((w - right - 150, y_switch - 14), f"switch sigma {switch_sigma:.4f}", fill=(230, 90, 90))
    if ref_values:
        ref_steps = max(len(ref_values) - 1, 1)
        ref_points = [(left + (w - left - right) * i / ref_steps, xy(0, s)[1]) for i, s in enumerate(ref_values)]
        draw.line(ref_points, fill=REFERENCE_COLOR, width=1)
        for p in ref_points:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], outline=REFERENCE_COLOR)
        draw.text((w - right - 150, top + 4), reference_label or "reference", fill=REFERENCE_COLOR)
    points = [xy(i, s) for i, s in enumerate(values)]
    draw.line(points, fill=(160, 160, 170), width=1)
    for i, (p, s) in enumerate(zip(points, values)):
        is_slow = i < len(values) - 1 and s > switch_sigma
        color = SLOW_COLOR if is_slow else FAST_COLOR
        draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color)
    n_slow = sum(1 for s in values[:-1] if s > switch_sigma)
    draw.text((left, 8), title or "sigma schedule", fill=(230, 230, 235))
    draw.text((left, h - bottom + 8), f"steps: {n_slow} slow", fill=SLOW_COLOR)
    draw.text((left + 110, h - bottom + 8), f"+ {len(values) - 1 - n_slow} fast", fill=FAST_COLOR)
    draw.text((w - right - 40, h - bottom + 8), "step", fill=(170, 170, 180))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


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


def with_preview(node_cls, *outputs, image: torch.Tensor) -> io.NodeOutput:
    """The node's outputs, with ``image`` (one of them) also previewed on the node."""
    return io.NodeOutput(*outputs, ui=ui.PreviewImage(image, cls=node_cls))
