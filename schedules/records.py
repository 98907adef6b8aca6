"""What a schedule file records: the fitted schedule, how it was fitted, and the identity of the model it fits.

A record is plain JSON (``schedules/files.py`` reads and writes it). ``model_identity`` reads a ModelPatcher's
public attributes only (no host import); ``identity_differences`` says how two identities differ.
"""
from __future__ import annotations

import hashlib
import logging
import math

import torch

from .checks import MAX_STEPS

log = logging.getLogger("comfyui-glance")


def model_identity(patcher) -> dict:
    """What identifies the model a schedule was fitted to: its class and sampling, its size, the weight patches
    (e.g. LoRAs) on it, and a fingerprint of its base weights (SHA-256 over a strided sample of up to 8 tensors
    the patcher does not patch; None where the weights cannot be read)."""
    model = patcher.model
    model_sampling = patcher.get_model_object("model_sampling")
    params = list(model.diffusion_model.named_parameters())
    identity = {
        "model_class": type(model).__name__,
        "sampling": type(model_sampling).__name__,
        "shift": _number(getattr(model_sampling, "shift", None)),
        "sigma_max": _number(getattr(model_sampling, "sigma_max", None)),
        "latent_channels": getattr(model.latent_format, "latent_channels", None),
        "parameters": int(sum(p.numel() for _, p in params)),
        "weight_patches": len(patcher.patches),
        "fingerprint": None,
    }
    try:
        patched = {k[len("diffusion_model."):] for k in patcher.patches if isinstance(k, str)}
        chosen = [(n, p) for n, p in params if n not in patched]
        step = max(1, len(chosen) // 8)
        digest = hashlib.sha256()
        for name, p in chosen[::step][:8]:
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096]
            digest.update(name.encode())
            digest.update(sample.to("cpu", torch.float32).contiguous().numpy().tobytes())
        identity["fingerprint"] = digest.hexdigest()[:16]
    except Exception as e:  # weights not readable here (e.g. not materialised): the rest still identifies the model
        log.debug("Glance: no weights fingerprint (%s)", e)
    return identity


def _number(value):
    if value is None:
        return None
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return None


def identity_differences(saved: dict, current: dict) -> list[str]:
    """Fields in which two model identities differ (fields missing from either are not compared)."""
    return [f"{k} {saved[k]!r} vs {current[k]!r}" for k in saved
            if k in current and saved[k] is not None and current[k] is not None and saved[k] != current[k]]


def schedule_record(fit, settings, identity: dict, resolution: list[int], prompts: int) -> dict:
    """The JSON-serialisable record of a fit (the schedule file's content): ``fit`` and ``settings`` as
    ``sampling/schedule_fit.py`` makes them (ScheduleFit, FitSettings)."""
    return {
        "format": "glance-schedule",
        "version": 1,
        "sigmas": [float(s) for s in fit.sigmas],
        "switch_sigma": fit.switch_sigma,
        "steps_slow": settings.steps_slow,
        "steps_fast": settings.steps_fast,
        "model": identity,
        "resolution": resolution,
        "cfg": settings.cfg,
        "fine_steps": settings.fine_steps,
        "scheduler": settings.scheduler,
        "fine_points": fit.nodes,
        "rollouts": settings.rollouts,
        "prompts": prompts,
        "seed": settings.seed,
        "requested_switch_sigma": settings.switch_sigma,
        "fit_error": fit.fit_error,
        "plain_sigmas": [float(s) for s in fit.plain_sigmas],
        "plain_error": fit.plain_error,
        "model_passes": fit.model_passes,
        "seconds": round(fit.seconds, 3),
    }


def schedule_from_record(record: dict, sigma_max: float | None = None) -> tuple[torch.Tensor, float]:
    """(SIGMAS, switch sigma) of a schedule record; a ValueError saying what is wrong with a broken one. Strict:
    numbers only (no strings or booleans), finite, >= 0, descending, at most MAX_STEPS steps, and within the
    model's sigma range when ``sigma_max`` is given."""
    if not isinstance(record, dict) or record.get("format") != "glance-schedule":
        raise ValueError("it is not a Glance schedule file (no \"format\": \"glance-schedule\")")
    values, switch = record.get("sigmas"), record.get("switch_sigma")
    if not isinstance(values, list) or not all(is_number(s) for s in values) or not is_number(switch):
        raise ValueError("its sigmas or switch_sigma are missing or not numbers (\"sigmas\" must be a list of numbers, "
                         "\"switch_sigma\" a number)")
    if len(values) - 1 > MAX_STEPS:
        raise ValueError(f"it has {len(values) - 1} steps; the sampler takes at most {MAX_STEPS}")
    if "model" in record and record["model"] is not None and not isinstance(record["model"], dict):
        raise ValueError("its \"model\" entry is not an object of the model's fields")
    sigmas = torch.tensor([float(s) for s in values], dtype=torch.float64)
    switch = float(switch)
    if len(sigmas) < 2 or not torch.isfinite(sigmas).all() or not torch.all(sigmas[1:] < sigmas[:-1]):
        raise ValueError("its sigmas are not a descending schedule of at least 2 finite values")
    if float(sigmas[-1]) < 0:
        raise ValueError(f"its sigmas go below 0 (down to {float(sigmas[-1]):g}); sigmas are noise levels >= 0")
    if sigma_max is not None and float(sigmas[0]) > float(sigma_max) * (1 + 1e-4) + 1e-6:
        raise ValueError(f"its sigmas start at {float(sigmas[0]):g}, above this model's largest sigma "
                         f"{float(sigma_max):g}")
    if not math.isfinite(switch) or switch < 0:
        raise ValueError(f"its switch_sigma {switch!r} is not a finite sigma >= 0")
    return sigmas.to(torch.float32), switch


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def latent_resolution(latent: torch.Tensor, downscale: int) -> list[int]:
    """[width, height] in pixels of the image a latent stands for, ``downscale`` image pixels per latent pixel (the
    model's own: ``host_compat.latent_downscale``; 8 for most families, 16 for Flux.2 and Wan 2.2 5B, 32 for
    HunyuanImage 2.1 and LTXV)."""
    return [int(latent.shape[-1]) * downscale, int(latent.shape[-2]) * downscale]
