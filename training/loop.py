"""The training loop: LoRA terms on the diffusion model, flow-matching velocity loss, the host's sampling path.

The model is loaded and the caption prepared by the host exactly as for sampling (a CFGGuider runs a Sampler whose
``sample`` is this loop), and every prediction goes through ``comfy.samplers.calc_cond_batch`` -> ``apply_model``.
Before anything is loaded, the run's memory (training/memory.py) is checked against the device and asked of the
host with a full load, as the host's own trainer loads its model. The LoRA terms live only while the loop runs
(training/adapters.py): afterwards the model has no hook, no trainable flag and the same tensors as before.
"""
from __future__ import annotations

import contextlib
import logging
import traceback
from dataclasses import dataclass, field
from typing import Callable

import comfy.model_management as mm
import comfy.samplers
import torch
import torch.utils.checkpoint

from ..host_compat import non_dynamic, training_mode
from . import memory, precision
from .adapters import frozen_base, lora_terms, target_layers
from .recipes import flow_time

GRAD_CLIP = 1.0
log = logging.getLogger(__name__)


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
    activation_per_token: dict[str, float] = field(default_factory=dict)  # recipe's c_block per block list
    width_module: str | None = None  # a Linear whose out_features is the model's hidden width


@dataclass
class TrainResult:
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (down [r,in], up [out,r]), fp32 CPU
    losses: list[float] = field(default_factory=list)
    sigmas_used: list[float] = field(default_factory=list)
    optimizer: str = ""
    precision: str = ""
    memory: memory.MemoryEstimate | None = None


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


def block_lists(dm: torch.nn.Module, names: tuple[str, ...]) -> list[tuple[str, torch.nn.ModuleList]]:
    names = names or tuple(n for n, c in dm.named_children() if isinstance(c, torch.nn.ModuleList))
    return [(n, getattr(dm, n)) for n in names if isinstance(getattr(dm, n, None), torch.nn.ModuleList)]


@contextlib.contextmanager
def trainable_blocks(dm: torch.nn.Module, list_names: tuple[str, ...], checkpoint: bool):
    """Wrap each block of the model's block lists for the duration; the original blocks are put back on exit."""
    wrapped = []
    try:
        for _, blocks in block_lists(dm, list_names):
            for i, block in enumerate(blocks):
                blocks[i] = _TrainableBlock(block, checkpoint)
                wrapped.append((blocks, i, block))
        yield len(wrapped)
    finally:
        for blocks, i, block in wrapped:
            blocks[i] = block


def optimizer_step(loss: torch.Tensor, params, optimizer, scaler=None) -> None:
    """Backward, clip to GRAD_CLIP, step, clear. With an fp16 loss ``scaler``: the loss is scaled, the gradients
    unscaled before clipping, and a step with inf/NaN gradients is skipped."""
    _backward(loss if scaler is None else scaler.scale(loss))
    if scaler is None:
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
    else:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


class NotTrainableError(RuntimeError):
    pass


def _backward(loss: torch.Tensor) -> None:
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


def hidden_width(dm: torch.nn.Module, width_module: str | None, targets) -> int:
    if width_module:
        return int(dm.get_submodule(width_module).out_features)
    return int(targets[0][1].in_features)


def plan_memory(patcher, targets, settings: TrainSettings, latent_shape, text_tokens: int,
                prec: precision.Precision, optimizer: str) -> memory.MemoryEstimate:
    """The run's memory (training/memory.py) for this model, latent and caption."""
    dm = patcher.model.diffusion_model
    fallback = max(settings.activation_per_token.values(), default=memory.GENERIC_PER_TOKEN)
    blocks = [memory.BlockList(name, len(mods), settings.activation_per_token.get(name, fallback))
              for name, mods in block_lists(dm, settings.block_lists)]
    return memory.estimate(
        weights=patcher.model_size(), layer_shapes=[(m.in_features, m.out_features) for _, m in targets],
        rank=settings.rank, blocks=blocks, tokens=memory.image_tokens(latent_shape) + int(text_tokens),
        width=hidden_width(dm, settings.width_module, targets), activation_bytes=prec.activation_bytes,
        checkpointing=settings.gradient_checkpointing, optimizer_name=optimizer,
    )


@dataclass
class RunSetup:
    """What a training run works with, decided before anything is loaded: a clone of the model outside the host's
    dynamic-VRAM path, its LoRA target layers, the device, the precision and the optimiser."""
    work: object
    targets: list
    device: torch.device
    precision: precision.Precision
    optimizer: str

    @property
    def dm(self) -> torch.nn.Module:
        return self.work.model.diffusion_model


def prepare_run(patcher, target_modules: tuple[str, ...], arch: str) -> RunSetup:
    """The run's clone, targets, device, precision and optimiser (shared by the trainer and the distiller)."""
    work = non_dynamic(patcher).clone()
    targets = target_layers(work.model.diffusion_model, target_modules)
    if not targets:
        raise ValueError(f"model: none of the LoRA target modules {list(target_modules)} exist in this {arch} model.")
    device = work.load_device
    return RunSetup(work=work, targets=targets, device=device, optimizer=optimizer_name(device),
                    precision=precision.choose(device, precision.compute_dtype(work)))


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
               on_step: Callable[[int, float, float, int], None] | None = None) -> TrainResult:
    """Train one LoRA on ``latent`` (the VAE latent, model layout) with caption ``positive``; nothing is saved here.
    ``on_step(step, loss, sigma, steps)`` is called after each optimiser step."""
    result = TrainResult(adapters={})
    positive = clone_tensors(positive)
    setup = prepare_run(patcher, settings.target_modules, arch)
    work, dm, targets, device, prec = setup.work, setup.dm, setup.targets, setup.device, setup.precision
    result.optimizer, result.precision = setup.optimizer, prec.describe()
    est = result.memory = plan_memory(work, targets, settings, latent.shape, positive[0][0].shape[1], prec, result.optimizer)
    log.info("Glance trainer: %s on %s, %s; %d LoRA layers, %.1fM parameters; memory: %s", arch, device, prec.describe(),
             len(targets), est.lora_params / 1e6, memory.breakdown(est))
    memory.check_fits(est, device, mm.get_total_memory(device), mm.extra_reserved_memory())

    def run(inner, conds, x0, model_options):
        memory.check_full_load(work, est, device)  # the guider's own load must not have offloaded part of it
        x0 = x0.float()
        ms = inner.model_sampling
        sigma_table = torch.tensor(settings.sigmas, dtype=torch.float32)
        with frozen_base(inner), lora_terms(dm, targets, settings.rank, settings.alpha, settings.seed, device) as pairs, \
                trainable_blocks(dm, settings.block_lists, settings.gradient_checkpointing):
            params = [p for pair in pairs.values() for p in (pair.down, pair.up)]
            optimizer = make_optimizer(result.optimizer, params, settings.learning_rate, settings.weight_decay)
            scaler = prec.scaler(device)
            gen = torch.Generator().manual_seed(settings.seed)
            view = (-1,) + (1,) * (x0.ndim - 1)

            def one_step(step: int) -> None:
                index = int(torch.randint(len(settings.sigmas), (1,), generator=gen))
                noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device)
                drop = float(torch.rand((), generator=gen)) < settings.caption_dropout
                sigma = sigma_table[index].expand(x0.shape[0]).to(device)
                # The noisy latent as the host's sampler makes it (x_t = (1 - sigma) x0 + sigma noise for
                # rectified-flow models; x0 + sigma noise for Cosmos, whose network sees x / (1 + sigma)).
                x_t = ms.noise_scaling(sigma, noise, x0)
                with prec.autocast_context(device):
                    denoised = comfy.samplers.calc_cond_batch(
                        inner, [conds["dropped" if drop else "positive"]], x_t, sigma, model_options)[0]
                # The velocity loss: for a flow model at flow time t, denoised = x_t - t * v_pred, so the network's
                # velocity error v_pred - (noise - x0) is exactly (x0 - denoised) / t.
                t = flow_time(ms, sigma).view(view)
                loss = torch.mean(((x0 - denoised.float()) / t) ** 2)
                if not torch.isfinite(loss):
                    raise NaNLossError(
                        f"Training stopped at step {step + 1}/{settings.steps}: the loss is {loss.item()} (not finite). "
                        f"Lower learning_rate (now {settings.learning_rate:g}) or check the model and image; no file was written."
                    )
                optimizer_step(loss, params, optimizer, scaler)
                result.losses.append(float(loss.item()))
                result.sigmas_used.append(float(sigma_table[index]))

            try:
                for step in range(settings.steps):
                    mm.throw_exception_if_processing_interrupted()
                    one_step(step)
                    if on_step is not None:
                        on_step(step, result.losses[-1], result.sigmas_used[-1], settings.steps)
            except BaseException as e:
                # A failed step's tensors (its autograd graph keeps the base's weights) must go before the base is
                # restored; the traceback would keep them alive.
                traceback.clear_frames(e.__traceback__)
                raise
            result.adapters = {n: (p.down.detach().float().cpu().clone(), p.up.detach().float().cpu().clone())
                               for n, p in pairs.items()}
            del optimizer, params

    guider = _TrainGuider(work)
    guider.set_training_conds(positive, zeroed(positive))
    # The whole model on the device with room for the training state beside it, loaded inside inference mode as the
    # executor loads models: a weight moved outside it would keep no version counter, and the shared model could not
    # be sampled afterwards. The guider's own load below finds it loaded and moves nothing.
    with torch.inference_mode():
        mm.load_models_gpu([work], memory_required=est.training, force_full_load=True)
    memory.check_full_load(work, est, device)
    with torch.inference_mode(False), torch.enable_grad(), training_mode():
        latent = latent.detach().clone()
        sigmas = torch.tensor(settings.sigmas, dtype=torch.float32)
        guider.sample(torch.zeros_like(latent), latent, _TrainingSampler(run), sigmas, seed=settings.seed)
    return result
