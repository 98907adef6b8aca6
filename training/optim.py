"""The optimiser of a LoRA run: bitsandbytes' 8-bit AdamW on CUDA where it imports, else torch's AdamW; one step with
gradient clipping (and loss scaling for fp16 models)."""
from __future__ import annotations

import torch

GRAD_CLIP = 1.0


class NotTrainableError(RuntimeError):
    pass


def checked_backward(loss: torch.Tensor) -> None:
    """``loss.backward()``; a clear error when the host's model runs an operation autograd cannot differentiate
    (v0.33's Cosmos Predict2 attention runs comfy_kitchen's fused rms_rope_split_half kernel, which has none)."""
    try:
        loss.backward()
    except RuntimeError as e:
        if "no autograd formula" not in str(e):
            raise
        raise NotTrainableError(
            f"model: this ComfyUI version runs an operation in this model that cannot be trained through ({e}). "
            "No LoRA can be trained on this model with this ComfyUI version; sampling, Glance Sigmas and Glance Fit "
            "Schedule still work. Nothing was saved.") from None


def optimizer_step(loss: torch.Tensor, params, optimizer, scaler=None) -> None:
    """Backward, clip to GRAD_CLIP, step, clear. With an fp16 loss ``scaler``: the loss is scaled, the gradients
    unscaled before clipping, and a step with inf/NaN gradients is skipped."""
    checked_backward(loss if scaler is None else scaler.scale(loss))
    if scaler is None:
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
    else:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


def optimizer_name(device: torch.device) -> str:
    """bitsandbytes' 8-bit AdamW on CUDA when it imports, else torch's AdamW."""
    if device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            return "AdamW8bit"
        except Exception:  # not installed, or its CUDA libraries do not load
            pass
    return "AdamW"


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "AdamW8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
