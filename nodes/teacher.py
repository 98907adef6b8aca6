"""Teacher rollouts: the guided model's own Euler trajectory on a fine schedule, recorded through the host's sampler.

Rollout ``r`` is exactly what the host's KSampler samples with ``euler``, those sigmas, the given cfg and seed
``seed + r``: a stock ``CFGGuider`` prepares the model and the prompts, and the stock ``euler`` sampler runs;
a thin ``Sampler`` around it records, at every schedule point, the state x and the guided velocity
``(x - denoised) / sigma`` that the Euler step takes there (plus the final state). States live in the sampler's
latent space (after the model's ``process_latent_in``), the space every step is taken in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import comfy.model_management as mm
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import torch

COUNTER_KEY = "glance_teacher_passes"


@dataclass
class Rollout:
    prompt: int  # index into the prompts the rollouts cycle through
    seed: int
    x: torch.Tensor  # [N+1, *latent]: the state at each of the N+1 schedule points (CPU, fp32)
    velocity: torch.Tensor  # [N, *latent]: the guided velocity at the first N points (CPU, fp32)


class PassCounter:
    """Counts images through the diffusion model (an APPLY_MODEL wrapper): cond and uncond count one each."""

    def __init__(self):
        self.passes = 0

    def __call__(self, executor, x, *args, **kwargs):
        self.passes += int(x.shape[0])
        return executor(x, *args, **kwargs)

    def attach(self, patcher):
        """A clone of ``patcher`` that counts its passes (the original is untouched)."""
        counted = patcher.clone()
        counted.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, COUNTER_KEY, self)
        return counted


class _Recorder(comfy.samplers.Sampler):
    """Runs the host's sampler and keeps what each of its steps saw."""

    def __init__(self, sampler, on_step: Callable[[int], None] | None):
        self.sampler, self.on_step = sampler, on_step
        self.xs: list[torch.Tensor] = []
        self.vs: list[torch.Tensor] = []

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        def record(step, denoised, x, total_steps):
            sigma = sigmas[step]
            self.xs.append(x.detach().float().cpu().clone())
            self.vs.append(((x - denoised) / sigma).detach().float().cpu())
            if self.on_step is not None:
                self.on_step(step)

        out = self.sampler.sample(model_wrap, sigmas, extra_args, record, noise, latent_image, denoise_mask, disable_pbar)
        self.xs.append(out.detach().float().cpu().clone())
        return out


def rollout(patcher, positive, negative, cfg: float, latent: torch.Tensor, sigmas: torch.Tensor, seed: int,
            prompt: int = 0, on_step: Callable[[int], None] | None = None) -> Rollout:
    """One teacher rollout: ``euler`` over ``sigmas`` from the noise of ``seed``, recorded at every point.

    ``latent`` is the (empty) latent of one image in the model's layout; ``on_step(i)`` runs after each step
    (progress, interrupts)."""
    guider = comfy.samplers.CFGGuider(patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    recorder = _Recorder(comfy.samplers.sampler_object("euler"), on_step)
    noise = comfy.sample.prepare_noise(latent, seed)
    guider.sample(noise, latent, recorder, sigmas, disable_pbar=True, seed=seed)
    steps = len(sigmas) - 1
    if len(recorder.xs) != steps + 1:
        raise RuntimeError(f"the sampler recorded {len(recorder.xs) - 1} of {steps} steps")
    return Rollout(prompt=prompt, seed=seed, x=torch.cat(recorder.xs), velocity=torch.cat(recorder.vs))


def rollouts(patcher, prompts: list, negative, cfg: float, latent: torch.Tensor, sigmas: torch.Tensor, count: int,
             seed: int, on_rollout: Callable[[Rollout], None], on_step: Callable[[int, int], None] | None = None) -> int:
    """``count`` rollouts (rollout r: prompt r mod len(prompts), seed + r), each handed to ``on_rollout`` as it
    finishes (so that only one is held at a time); ``on_step(r, i)`` after each step. Checks for an interrupt at
    every step. Returns the number of model passes they took."""
    counter = PassCounter()
    counted = counter.attach(patcher)
    for r in range(count):
        mm.throw_exception_if_processing_interrupted()

        def step(i, r=r):
            mm.throw_exception_if_processing_interrupted()
            if on_step is not None:
                on_step(r, i)

        p = r % len(prompts)
        on_rollout(rollout(counted, prompts[p], negative, cfg, latent, sigmas, seed + r, prompt=p, on_step=step))
    return counter.passes


def split_prompts(positive: list) -> list[list]:
    """Each entry of a CONDITIONING list as a prompt of its own (Conditioning (Combine) joins prompts into one list)."""
    return [[entry] for entry in positive]
