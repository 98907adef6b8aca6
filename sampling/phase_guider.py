"""One sampler run over two models: steps that start above a switch sigma use the slow model, the rest the fast one.

``PhaseGuider`` is a ``comfy.samplers.CFGGuider`` (the host's extension point for guidance, as its DualCFGGuider
and PerpNeg guiders are), so every sampler gets the host's own kind of object. It guides with the slow model and
holds a stock ``CFGGuider`` for the fast one. A run nests the two guiders' ``sample()``: the fast guider prepares
its model (conds, hooks, control models, OUTER_SAMPLE / SAMPLER_SAMPLE wrappers such as EasyCache) exactly as for
KSampler, then hands over to the run's slow guider (``_PhaseRun``, made for each run and dropped with it), which
prepares the slow model and runs the real sampler once over all sigmas. Each evaluation goes to the phase its step belongs to; at the first fast evaluation the fast model is
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

from ..schedules.checks import check_sigmas
from ..schedules.switch import first_fast_step

log = logging.getLogger("comfyui-glance")


@dataclass
class PhasePlan:
    """Where one sampling run switches, and (after it) what the switch took: the run's report."""

    steps: int
    switch_step: int
    fast_from: float = -1.0  # evaluations at or below this sigma belong to the fast phase
    switch_sigma_value: float | None = None
    switch_seconds: float = 0.0

    @classmethod
    def of(cls, sigmas: torch.Tensor, switch_sigma: float) -> "PhasePlan":
        steps = len(sigmas) - 1
        switch_step = first_fast_step(sigmas, switch_sigma)
        plan = cls(steps=steps, switch_step=switch_step)
        if 0 < switch_step < steps:
            # An evaluation belongs to the step whose sigma interval holds it: sub-step evaluations (2S, SDE, DPM-2
            # midpoints) stay in their step's phase; one at a schedule point is that step's start.
            start = float(sigmas[switch_step])
            plan.fast_from = start * (1 + 1e-6) + 1e-7
            plan.switch_sigma_value = start
        return plan

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
    """The fast guider's sampler: hands the prepared fast guider to the run and runs the run's slow guider inside."""

    def __init__(self, run: "_PhaseRun", sampler, sample_args: tuple):
        self.run, self.sampler, self.sample_args = run, sampler, sample_args
        self.raw: torch.Tensor | None = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        self.run.fast_guider, self.run.fast_options = model_wrap, extra_args["model_options"]
        noise0, latent0, sigmas0, mask0, callback0, disable0, seed0 = self.sample_args
        self.run.sample(noise0, latent0, _Capture(self.sampler, self), sigmas0, mask0, callback0, disable0, seed0)
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


class _PhaseRun(comfy.samplers.CFGGuider):
    """One two-phase sampling run, made per run and dropped with it: the slow model's guider (with the phase guider's
    conds, cfg and model options) that sends each evaluation of a fast step to the prepared fast guider."""

    def __init__(self, phase_guider: "PhaseGuider", plan: PhasePlan, noise_shape: tuple):
        super().__init__(phase_guider.model_patcher)
        self.model_options, self.original_conds = phase_guider.model_options, phase_guider.original_conds
        self.cfg, self.plan, self.noise_shape = phase_guider.cfg, plan, noise_shape
        self.fast_guider: comfy.samplers.CFGGuider | None = None  # prepared by its own sample(), set on entering it
        self.fast_options: dict | None = None
        self.slow_options: dict | None = None
        self.switched = False

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        if float(timestep.flatten()[0]) > self.plan.fast_from:
            return super().outer_predict_noise(x, timestep, model_options, seed)
        if not self.switched:
            self._switch()
        options = _options_for_fast(self.fast_options, self.slow_options, model_options)
        return self.fast_guider(x, timestep, model_options=options, seed=seed)

    def _switch(self) -> None:
        start = time.perf_counter()
        fast = self.fast_guider
        if not _loads_alike(self.model_patcher, fast.model_patcher):
            comfy.sampler_helpers.prepare_sampling(fast.model_patcher, self.noise_shape, fast.conds, fast.model_options)
        # The fast model's patcher is the current one from here on (hooks, ON_PREPARE_STATE), as in its own run.
        fast.model_patcher.pre_run()
        self.plan.switch_seconds = time.perf_counter() - start
        self.switched = True
        log.info(self.plan.summary())


class PhaseGuider(comfy.samplers.CFGGuider):
    """A CFGGuider over two models: ``model_slow`` with ``cfg_slow`` for steps starting above ``switch_sigma``,
    ``model_fast`` with ``cfg_fast`` for the rest, in one sampler run. It holds the configuration only; each run's
    state lives in its own ``_PhaseRun``, and ``last_run`` is the last run's plan and report."""

    def __init__(self, model_slow, model_fast, switch_sigma: float, cfg_slow: float = 1.0, cfg_fast: float = 1.0):
        super().__init__(model_slow)
        self.fast = comfy.samplers.CFGGuider(model_fast)
        self.switch_sigma = float(switch_sigma)
        self.set_cfg(cfg_slow)
        self.fast.set_cfg(cfg_fast)
        self.last_run: PhasePlan | None = None

    def set_conds(self, positive, negative):
        super().set_conds(positive, negative)
        self.fast.set_conds(positive, negative)

    def inner_set_conds(self, conds):
        super().inner_set_conds(conds)
        self.fast.inner_set_conds(conds)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        check_sigmas(sigmas, "sigmas")  # a NaN would sample a black image that looks like a success
        plan = self.last_run = PhasePlan.of(sigmas.detach().float().cpu(), self.switch_sigma)
        if plan.phases != "both":
            log.info(plan.summary())
            guider = self.fast if plan.phases == "fast" else super()
            return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        handover = _Handover(_PhaseRun(self, plan, tuple(noise.shape)), sampler,
                             (noise, latent_image, sigmas, denoise_mask, callback, disable_pbar, seed))
        return self.fast.sample(noise, latent_image, handover, sigmas, denoise_mask, None, True, seed)
