"""Teacher rollouts: the guided model's own Euler trajectory on a fine schedule, recorded through the host's sampler.

Rollout ``r`` is what the host's KSampler samples with ``euler``, those sigmas, the given cfg and seed ``seed + r``
(one prompt's rollouts run as one batch where the device holds it): a stock ``CFGGuider`` prepares the model and
the prompts, and the stock ``euler`` sampler runs;
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

from .phase_guider import PhaseGuider

COUNTER_KEY = "glance_teacher_passes"
# The default teacher of the fit and of the distillation: 100 steps of kl_optimal are converged (doubling them moves
# the result by less than a tenth of the few-step error fitted: benchmarks/README.md), within 16 fifty-step images.
FINE_STEPS, FINE_SCHEDULER = 100, "kl_optimal"


def check_rollouts_cover_prompts(prompts: int, rollouts: int) -> None:
    """The rollouts take turns over the prompts (rollout r samples prompt r mod prompts): with fewer rollouts than
    prompts, the last prompts would never be sampled."""
    if rollouts < prompts:
        raise ValueError(
            f"rollouts={rollouts}: positive joins {prompts} prompts (Conditioning (Combine)) and the teacher's rollouts "
            f"take turns over them, so prompts {rollouts + 1} to {prompts} would never be sampled. Set rollouts to at "
            f"least {prompts}, or join fewer prompts.")


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
    """Runs the host's sampler and keeps what each of its steps saw (the whole batch)."""

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


def rollout_batch(patcher, positive, negative, cfg: float, latent: torch.Tensor, sigmas: torch.Tensor, seeds: list[int],
                  prompt: int = 0, on_step: Callable[[int], None] | None = None, sampler: str = "euler",
                  low_noise=None, handover: float | None = None) -> list[Rollout]:
    """Teacher rollouts of one prompt in one batch: ``euler`` over ``sigmas``, rollout b from the noise of
    ``seeds[b]`` (the noise the host's KSampler draws for that seed), recorded at every point (``sampler``: another
    of the host's samplers instead of ``euler``; the velocity recorded is still ``(x - denoised) / sigma``).

    ``latent`` is the (empty) latent of one image in the model's layout; ``on_step(i)`` runs after each step
    (progress, interrupts). With ``low_noise`` (a second model, e.g. Wan 2.2's low-noise expert) the teacher is the
    pair, as Glance Phase KSampler samples it: ``patcher`` for steps starting above ``handover``, ``low_noise`` for
    the rest, at the same cfg."""
    guider = teacher_guider(patcher, positive, negative, cfg, low_noise, handover)
    recorder = _Recorder(comfy.samplers.sampler_object(sampler), on_step)
    noise = torch.cat([comfy.sample.prepare_noise(latent, seed) for seed in seeds])
    guider.sample(noise, latent.expand(len(seeds), *latent.shape[1:]).contiguous(), recorder, sigmas, disable_pbar=True,
                  seed=seeds[0])
    steps = len(sigmas) - 1
    if len(recorder.xs) != steps + 1:
        raise RuntimeError(f"the sampler recorded {len(recorder.xs) - 1} of {steps} steps")
    xs, vs = torch.stack(recorder.xs, dim=1), torch.stack(recorder.vs, dim=1)  # [batch, N+1 | N, *latent]
    return [Rollout(prompt=prompt, seed=seed, x=xs[b].clone(), velocity=vs[b].clone()) for b, seed in enumerate(seeds)]


def teacher_guider(patcher, positive, negative, cfg: float, low_noise=None, handover: float | None = None):
    """The host's guider for the teacher: ``patcher`` alone, or with ``low_noise`` the pair as Glance Phase KSampler
    runs it (``patcher`` for steps starting above ``handover``, ``low_noise`` for the rest, same cfg)."""
    if low_noise is None:
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_cfg(cfg)
    else:
        guider = PhaseGuider(patcher, low_noise, handover, cfg, cfg)
    guider.set_conds(positive, negative)
    return guider


def batch_size(patcher, latent: torch.Tensor, wanted: int) -> int:
    """How many rollouts to sample in one batch (at most ``wanted``): as many as the device holds beside the whole
    model, by the host's own estimate of a sampling batch's memory (cond and uncond); at least 1."""
    if wanted <= 1:
        return 1
    device = patcher.load_device
    room = mm.get_total_memory(device) - patcher.model_size() - mm.extra_reserved_memory()
    per_image = patcher.model.memory_required([2, *latent.shape[1:]])
    if per_image <= 0:
        return wanted
    return max(1, min(wanted, int(room // per_image)))


def rollouts(patcher, prompts: list, negative, cfg: float, latent: torch.Tensor, sigmas: torch.Tensor, count: int,
             seed: int, on_rollout: Callable[[Rollout], None], on_step: Callable[[int], None] | None = None,
             sampler: str = "euler", low_noise=None, handover: float | None = None) -> int:
    """``count`` rollouts (rollout r: prompt r mod len(prompts), seed + r), each handed to ``on_rollout`` as its
    batch finishes (so that only one batch is held at a time). A prompt's rollouts run in batches (``batch_size``);
    ``on_step(done)`` after each step, ``done`` counting rollout-steps (a batch of b rollouts adds b per step).
    Checks for an interrupt at every step. Returns the number of model passes they took."""
    counter = PassCounter()
    counted = counter.attach(patcher)
    counted_low = counter.attach(low_noise) if low_noise is not None else None
    steps = len(sigmas) - 1
    done = 0
    for p in range(min(count, len(prompts))):
        mine = list(range(p, count, len(prompts)))
        size = batch_size(patcher, latent, len(mine))
        for start in range(0, len(mine), size):
            batch = mine[start:start + size]
            mm.throw_exception_if_processing_interrupted()

            def step(i, first=done, n=len(batch)):
                mm.throw_exception_if_processing_interrupted()
                if on_step is not None:
                    on_step(first + (i + 1) * n)

            for r in rollout_batch(counted, prompts[p], negative, cfg, latent, sigmas, [seed + r for r in batch],
                                   prompt=p, on_step=step, sampler=sampler, low_noise=counted_low,
                                   handover=handover):
                on_rollout(r)
            done += steps * len(batch)
    return counter.passes


def split_prompts(positive: list) -> list[list]:
    """Each entry of a CONDITIONING list as a prompt of its own (Conditioning (Combine) joins prompts into one list)."""
    return [[entry] for entry in positive]
