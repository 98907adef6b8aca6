"""How a training step computes: bf16 autocast where the device supports it, loss scaling where the model computes in
fp16. The LoRA matrices and their optimiser state are fp32 in every case (training/adapters.py)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import comfy.model_management as mm
import torch


@dataclass(frozen=True)
class Precision:
    autocast: torch.dtype | None  # dtype of torch.autocast on the device; None: the model's own compute dtype
    loss_scaling: bool  # scale the loss (torch.amp.GradScaler) so fp16 gradients do not underflow
    compute_dtype: torch.dtype  # what the host computes the model in (its manual-cast dtype, else its weight dtype)

    @property
    def activation_bytes(self) -> int:
        """Bytes per saved activation element."""
        return torch.empty((), dtype=self.autocast or self.compute_dtype).element_size()

    def describe(self) -> str:
        if self.autocast is not None:
            return f"{str(self.autocast).replace('torch.', '')} autocast" + (" with loss scaling" if self.loss_scaling else "")
        return str(self.compute_dtype).replace("torch.", "") + (" with loss scaling" if self.loss_scaling else "")

    def autocast_context(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)

    def scaler(self, device: torch.device):
        """A GradScaler for the device, or None."""
        return torch.amp.GradScaler(device.type) if self.loss_scaling else None


def compute_dtype(patcher) -> torch.dtype:
    model = patcher.model
    return model.manual_cast_dtype if getattr(model, "manual_cast_dtype", None) is not None else model.get_dtype()


def choose(device: torch.device, model_compute: torch.dtype) -> Precision:
    """fp16 models: fp16 activations, fp32 LoRA, loss scaling (as the host's own trainer does for fp16). CUDA with bf16
    (the host's own judgement of the device, which honours --force-fp32): bf16 autocast. Else the model's dtype."""
    if model_compute == torch.float16:
        return Precision(None, True, model_compute)
    if device.type == "cuda" and mm.should_use_bf16(device):
        return Precision(torch.bfloat16, False, model_compute)
    return Precision(None, False, model_compute)
