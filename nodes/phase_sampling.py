"""One sampler run over two models: steps that start above a switch sigma use the slow model, the rest the fast one.

``PhaseGuider`` is a ``comfy.samplers.CFGGuider`` (the host's extension point for guidance, as its DualCFGGuider
and PerpNeg guiders are), so every sampler gets the host's own kind of object. It guides with the slow model and
holds a stock ``CFGGuider`` for the fast one. A run nests the two guiders' ``sample()``: the fast guider prepares
its model (conds, hooks, control models, OUTER_SAMPLE / SAMPLER_SAMPLE wrappers such as EasyCache) exactly as for
KSampler, then hands over to this guider, which prepares the slow model and runs the real sampler once over all
sigmas. Each evaluation goes to the phase its step belongs to; at the first fast evaluation the fast model is
loaded through the host's ``prepare_sampling`` and made the current patcher of its model. Multistep history and
the noise stream live in the one sampler run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..validation import check_sigmas
from .schedules import first_fast_step

log = logging.getLogger("comfyui-glance")


@dataclass
class PhaseRun:
    """The state of one sampling run: where it switches, and what the switch did."""

    steps: int
    switch_step: int
    fast_from: float = -1.0  # evaluations at or below this sigma belong to the fast phase
    switch_sigma_value: float | None = None
    switch_seconds: float = 0.0
    fast_guider: comfy.samplers.CFGGuider | None = None  # prepared by its own sample(), set on entering it
    fast_options: dict | None = None
    slow_options: dict | None = None
    noise_shape: tuple = ()
    switched: bool = False

    @classmethod
    def plan(cls, sigmas: torch.Tensor, switch_sigma: float) -> "PhaseRun":
        steps = len(sigmas) - 1
        switch_step = first_fast_step(sigmas, switch_sigma)
        run = cls(steps=steps, switch_step=switch_step)
        if 0 < switch_step < steps:
            # An evaluation belongs to the step whose sigma interval holds it: sub-step evaluations (2S, SDE, DPM-2
            # midpoints) stay in their step's phase; one at a schedule point is that step's start.
            start = float(sigmas[switch_step])
            run.fast_from = start * (1 + 1e-6) + 1e-7
            run.switch_sigma_value = start
        return run

    @property
    def phases(self) -> str:
        if self.switch_step >= self.steps:
            return "slow"
        return "fast" if self.switch_step == 0 else "both"

    def summary(self) -> str:
        if self.phases == "slow":
            return f"Glance: all {self.steps} steps ran on the slow model (switch sigma below the schedule)."
        if self.phases == "fast":
            return f"Glance: all {self.steps} steps ran on the fast model (switch sigma above the schedule)."
        return (f"switched to fast model at step {self.switch_step + 1} of {self.steps} "
                f"(sigma={self.switch_sigma_value:.4f}, model switch took {self.switch_seconds * 1000:.1f} ms)")


class _Handover(comfy.samplers.Sampler):
    """The fast guider's sampler: keeps the prepared fast guider and runs the phase guider inside its run."""

    def __init__(self, phase_guider: "PhaseGuider", run: PhaseRun, sampler, sample_args: tuple):
        self.phase_guider, self.run, self.sampler, self.sample_args = phase_guider, run, sampler, sample_args
        self.raw: torch.Tensor | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        self.run.fast_guider, self.run.fast_options = model_wrap, extra_args["model_options"]
        noise0, latent0, sigmas0, mask0, callback0, disable0, seed0 = self.sample_args
        self.phase_guider.sample_slow(noise0, latent0, _Capture(self.sampler, self), sigmas0, mask0, callback0, disable0, seed0)
        # The fast guider applies process_latent_out to what this returns, once, as a single KSampler run does.
        return self.raw


class _Capture(comfy.samplers.Sampler):
    """Runs the real sampler and keeps its raw output (before the slow guider's process_latent_out)."""

    def __init__(self, sampler, handover: _Handover):
        self.sampler, self.handover = sampler, handover

    def sample(self, model_wrap, sigmas, extra_args, *args, **kwargs):
        self.handover.run.slow_options = extra_args["model_options"]  # before the sampler adds its own (CFG++)
        self.handover.raw = self.sampler.sample(model_wrap, sigmas, extra_args, *args, **kwargs)
        return self.handover.raw


def _options_for_fast(fast_options: dict, slow_options: dict, passed: dict) -> dict:
    """The fast phase's model_options plus what the running sampler added to the slow ones (e.g. CFG++ post-cfg)."""
    if passed is slow_options:
        return fast_options
    merged = comfy.model_patcher.create_model_options_clone(fast_options)
    base_post = slow_options.get("sampler_post_cfg_function", [])
    extra_post = passed.get("sampler_post_cfg_function", [])[len(base_post):]
    if extra_post:
        merged["sampler_post_cfg_function"] = merged.get("sampler_post_cfg_function", []) + list(extra_post)
    if passed.get("disable_cfg1_optimization") and not slow_options.get("disable_cfg1_optimization"):
        merged["disable_cfg1_optimization"] = True
    return merged


def _loads_alike(loaded, other) -> bool:
    """Whether ``other`` needs nothing loaded that ``loaded`` has not: a clone of the same model with the same
    weights, object patches and extra models in the host's own terms (e.g. two forward-expert clones)."""
    if not loaded.is_clone(other) or loaded.wrappers.keys() != other.wrappers.keys() \
            or loaded.callbacks.keys() != other.callbacks.keys():
        return False  # (the host's comparison below expects both to have the same kinds of wrappers and callbacks)
    if not loaded.clone_has_same_weights(other):
        return False
    patches_a, patches_b = loaded.object_patches, other.object_patches
    return patches_a.keys() == patches_b.keys() and all(patches_a[k] is patches_b[k] for k in patches_a)


class PhaseGuider(comfy.samplers.CFGGuider):
    """A CFGGuider over two models: ``model_slow`` with ``cfg_slow`` for steps starting above ``switch_sigma``,
    ``model_fast`` with ``cfg_fast`` for the rest, in one sampler run."""

    def __init__(self, model_slow, model_fast, switch_sigma: float, cfg_slow: float = 1.0, cfg_fast: float = 1.0):
        super().__init__(model_slow)
        self.fast = comfy.samplers.CFGGuider(model_fast)
        self.switch_sigma = float(switch_sigma)
        self.set_cfg(cfg_slow)
        self.fast.set_cfg(cfg_fast)
        self.last_run: PhaseRun | None = None
        self._run: PhaseRun | None = None

    def set_conds(self, positive, negative):
        super().set_conds(positive, negative)
        self.fast.set_conds(positive, negative)

    def inner_set_conds(self, conds):
        super().inner_set_conds(conds)
        self.fast.inner_set_conds(conds)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        check_sigmas(sigmas, "sigmas")  # a NaN would sample a black image that looks like a success
        run = PhaseRun.plan(sigmas.detach().float().cpu(), self.switch_sigma)
        run.noise_shape = tuple(noise.shape)
        self.last_run = run
        if run.phases != "both":
            log.info(run.summary())
            guider = self.fast if run.phases == "fast" else super()
            return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        handover = _Handover(self, run, sampler, (noise, latent_image, sigmas, denoise_mask, callback, disable_pbar, seed))
        self._run = run
        try:
            return self.fast.sample(noise, latent_image, handover, sigmas, denoise_mask, None, True, seed)
        finally:
            # last_run keeps the report only: no reference to the prepared guider, its conds or options.
            self._run = run.fast_guider = run.fast_options = run.slow_options = None

    def sample_slow(self, *args):
        """The slow guider's own run (CFGGuider.sample), with this guider as the model the sampler calls."""
        return super().sample(*args)

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        run = self._run
        if run is None or float(timestep.flatten()[0]) > run.fast_from:
            return super().outer_predict_noise(x, timestep, model_options, seed)
        if not run.switched:
            self._switch(run)
        options = _options_for_fast(run.fast_options, run.slow_options, model_options)
        return run.fast_guider(x, timestep, model_options=options, seed=seed)

    def _switch(self, run: PhaseRun) -> None:
        start = time.perf_counter()
        fast = run.fast_guider
        if not _loads_alike(self.model_patcher, fast.model_patcher):
            comfy.sampler_helpers.prepare_sampling(fast.model_patcher, run.noise_shape, fast.conds, fast.model_options)
        # The fast model's patcher is the current one from here on (hooks, ON_PREPARE_STATE), as in its own run.
        fast.model_patcher.pre_run()
        run.switch_seconds = time.perf_counter() - start
        run.switched = True
        log.info(run.summary())
