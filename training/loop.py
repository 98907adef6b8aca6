"""The training loop: peft LoRA adapters on the diffusion model, flow-matching velocity loss, the host's sampling path.

The model is loaded and the caption prepared by the host exactly as for sampling (a CFGGuider runs a Sampler whose
``sample`` is this loop), and every prediction goes through ``comfy.samplers.calc_cond_batch`` -> ``apply_model``.
Adapters live only while the loop runs: afterwards the diffusion model has its original modules again and its
weights were never written (the optimiser only sees the LoRA matrices).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import comfy.model_management as mm
import comfy.samplers
import torch
import torch.utils.checkpoint

from ..host_compat import training_mode

ADAPTER = "glance"
GRAD_CLIP = 1.0


class NaNLossError(RuntimeError):
    pass


@dataclass
class TrainSettings:
    sigmas: tuple[float, ...]
    target_modules: tuple[str, ...]
    rank: int
    alpha: float
    learning_rate: float
    steps: int
    seed: int
    caption_dropout: float = 0.0
    gradient_checkpointing: bool = True
    block_lists: tuple[str, ...] = ()
    weight_decay: float = 0.01


@dataclass
class TrainResult:
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (down [r,in], up [out,r]), fp32 CPU
    losses: list[float] = field(default_factory=list)
    sigmas_used: list[float] = field(default_factory=list)
    optimizer: str = ""


def clone_tensors(obj):
    """Copies of the tensors in a conditioning structure (tensors made under inference mode cannot enter autograd)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tensors(v) for v in obj)
    return obj


def zeroed(conditioning: list) -> list:
    """The dropped caption: all-zero embeddings, as the host's ConditioningZeroOut makes them."""
    out = []
    for cond, extras in conditioning:
        extras = dict(extras)
        if isinstance(extras.get("pooled_output"), torch.Tensor):
            extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
        out.append([torch.zeros_like(cond), extras])
    return out


def _release_inference_tensors(module: torch.nn.Module) -> None:
    """Weights loaded inside the executor's inference mode cannot be saved for backward: same values, normal tensors."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_inference():
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_inference():
                sub._buffers[name] = b.clone()


@contextlib.contextmanager
def lora_adapters(dm: torch.nn.Module, settings: TrainSettings, arch: str):
    """Inject peft LoRA layers into ``dm``; yields {name: (A, B)} and removes every trace on exit."""
    from peft import LoraConfig  # imported on first training: peft pulls in transformers
    from peft.tuners.lora import LoraLayer, LoraModel

    flags = {n: p.requires_grad for n, p in dm.named_parameters()}
    had_config = hasattr(dm, "peft_config")
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.target_modules),
                        lora_dropout=0.0, bias="none", init_lora_weights=True)
    try:
        tuner = LoraModel(dm, config, ADAPTER)
    except ValueError as e:
        raise ValueError(
            f"model: none of the LoRA target modules {list(settings.target_modules)} exist in this {arch} model ({e})."
        ) from None
    try:
        gen = torch.Generator().manual_seed(settings.seed)
        adapters = {}
        for name, layer in sorted((n, m) for n, m in dm.named_modules() if isinstance(m, LoraLayer)):
            down_mod, up_mod = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
            down_mod.float()
            up_mod.float()
            with torch.no_grad():  # peft's init with our own generator: reproducible whatever the global RNG did
                a = torch.empty(down_mod.weight.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
                down_mod.weight.copy_(a)
                up_mod.weight.zero_()
            down_mod.weight.requires_grad_(True)
            up_mod.weight.requires_grad_(True)
            adapters[name] = (down_mod.weight, up_mod.weight)
        yield adapters
    finally:
        tuner.unload()
        if not had_config and hasattr(dm, "peft_config"):
            del dm.peft_config
        for n, p in dm.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
        left = [n for n, m in dm.named_modules() if isinstance(m, LoraLayer)]
        assert not left, f"LoRA layers left in the model: {left[:3]}"


def _fresh(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


class _TrainableBlock(torch.nn.Module):
    """Calls a block on copies of its tensor inputs, optionally under non-reentrant activation checkpointing.

    Some blocks (FLUX's) add to their input tensors in place; autograd needs those inputs unchanged, so each
    block gets its own copies (one activation-sized copy per block).
    """

    def __init__(self, block: torch.nn.Module, checkpoint: bool):
        super().__init__()
        self.block = block
        self.checkpoint = checkpoint

    def _run(self, *args, **kwargs):
        return self.block(*[_fresh(a) for a in args], **{k: _fresh(v) for k, v in kwargs.items()})

    def forward(self, *args, **kwargs):
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._run, *args, use_reentrant=False, **kwargs)
        return self._run(*args, **kwargs)


@contextlib.contextmanager
def trainable_blocks(dm: torch.nn.Module, list_names: tuple[str, ...], checkpoint: bool):
    """Wrap each block of the model's block lists for the duration; the original blocks are put back on exit."""
    wrapped = []
    try:
        names = list_names or tuple(n for n, c in dm.named_children() if isinstance(c, torch.nn.ModuleList))
        for list_name in names:
            blocks = getattr(dm, list_name, None)
            if isinstance(blocks, torch.nn.ModuleList):
                for i, block in enumerate(blocks):
                    blocks[i] = _TrainableBlock(block, checkpoint)
                    wrapped.append((blocks, i, block))
        yield len(wrapped)
    finally:
        for blocks, i, block in wrapped:
            blocks[i] = block


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device):
    """bitsandbytes' 8-bit AdamW on CUDA when it imports, else torch's AdamW."""
    if device.type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay), "AdamW8bit"
        except Exception:  # not installed, or its CUDA libraries do not load
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay), "AdamW"


def autocast_for(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _TrainGuider(comfy.samplers.CFGGuider):
    """The host's guider, so model loading and conditioning follow the sampling path; cfg 1, no negative."""

    def set_training_conds(self, positive, dropped):
        self.inner_set_conds({"positive": positive, "dropped": dropped})


class _TrainingSampler(comfy.samplers.Sampler):
    def __init__(self, run: Callable):
        self.run = run

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        self.run(model_wrap.inner_model, model_wrap.conds, latent_image, extra_args["model_options"])
        return latent_image


def train_lora(patcher, latent: torch.Tensor, positive: list, settings: TrainSettings, arch: str,
               on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Train one LoRA on ``latent`` (the VAE latent, model layout) with caption ``positive``; nothing is saved here."""
    result = TrainResult(adapters={})
    positive = clone_tensors(positive)
    work = patcher.clone()

    def run(inner, conds, x0, model_options):
        dm = inner.diffusion_model
        device = x0.device
        x0 = x0.float()
        sigma_table = torch.tensor(settings.sigmas, dtype=torch.float32)
        _release_inference_tensors(dm)
        with lora_adapters(dm, settings, arch) as adapters, \
                trainable_blocks(dm, settings.block_lists, settings.gradient_checkpointing):
            params = [p for pair in adapters.values() for p in pair]
            optimizer, result.optimizer = make_optimizer(params, settings.learning_rate, settings.weight_decay, device)
            gen = torch.Generator().manual_seed(settings.seed)
            view = (-1,) + (1,) * (x0.ndim - 1)
            for step in range(settings.steps):
                mm.throw_exception_if_processing_interrupted()
                index = int(torch.randint(len(settings.sigmas), (1,), generator=gen))
                noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device)
                drop = float(torch.rand((), generator=gen)) < settings.caption_dropout
                sigma = sigma_table[index].expand(x0.shape[0]).to(device)
                s = sigma.view(view)
                x_t = (1.0 - s) * x0 + s * noise
                with autocast_for(device):
                    denoised = comfy.samplers.calc_cond_batch(
                        inner, [conds["dropped" if drop else "positive"]], x_t, sigma, model_options)[0]
                # CONST models: denoised = x_t - v * sigma, so this recovers the network's velocity exactly.
                v_pred = (x_t - denoised.float()) / s
                loss = torch.nn.functional.mse_loss(v_pred, noise - x0)
                if not torch.isfinite(loss):
                    raise NaNLossError(
                        f"Training stopped at step {step + 1}/{settings.steps}: the loss is {loss.item()} (not finite). "
                        f"Lower learning_rate (now {settings.learning_rate:g}) or check the model and image; no file was written."
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                result.losses.append(float(loss.item()))
                result.sigmas_used.append(float(sigma_table[index]))
                if on_step is not None:
                    on_step(step, result.losses[-1], result.sigmas_used[-1])
            result.adapters = {n: (a.detach().float().cpu().clone(), b.detach().float().cpu().clone())
                               for n, (a, b) in adapters.items()}
            del optimizer

    guider = _TrainGuider(work)
    guider.set_training_conds(positive, zeroed(positive))
    with torch.inference_mode(False), torch.enable_grad(), training_mode():
        latent = latent.detach().clone()
        mm.load_models_gpu([work], memory_required=work.model.memory_required(list(latent.shape)) * 3)
        sigmas = torch.tensor(settings.sigmas, dtype=torch.float32)
        guider.sample(torch.zeros_like(latent), latent, _TrainingSampler(run), sigmas, seed=settings.seed)
    return result
