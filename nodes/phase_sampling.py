"""One sampler run over two models: steps starting above a switch sigma use the slow model, the rest the fast one.

Each model gets a stock ``CFGGuider`` of its own, so the host prepares it exactly as for KSampler (conds,
hooks, control models, OUTER_SAMPLE / SAMPLER_SAMPLE wrappers such as EasyCache). The two guiders are nested:
the fast guider's sample() runs a relay "sampler" that enters the slow guider's sample(), whose relay runs the
real sampler once over all sigmas with a model function that routes each step to its phase's guider. The slow
model is prepared last, so it is the one in place when sampling starts; at the switch the fast model is
loaded through the host's own ``prepare_sampling`` (for two LoRA clones of one base: LoRA weights un-merged
and re-merged once, by ModelPatcher). Multistep history and the noise stream live in the one sampler run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers
import torch

from .schedules import first_fast_step

log = logging.getLogger("comfyui-glance")


@dataclass
class PhaseReport:
    """What a run did: which step switched, at which sigma, how long the switch (model load) took."""

    steps: int
    switch_step: int
    switch_sigma_value: float | None = None
    switch_seconds: float = 0.0
    calls: list[tuple[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        if self.switch_step >= self.steps:
            return f"Glance: all {self.steps} steps ran on the slow model (switch sigma below the schedule)."
        if self.switch_step == 0:
            return f"Glance: all {self.steps} steps ran on the fast model (switch sigma above the schedule)."
        return (f"switched to fast model at step {self.switch_step + 1} of {self.steps} "
                f"(sigma={self.switch_sigma_value:.4f}, model switch took {self.switch_seconds * 1000:.0f} ms)")


class _Relay(comfy.samplers.Sampler):
    """A host Sampler that hands the prepared guider and its extra_args to a function."""

    def __init__(self, enter):
        self.enter = enter

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        return self.enter(model_wrap, extra_args, noise, latent_image, denoise_mask)


def _options_for_phase(phase_options: dict, slow_base: dict, passed: dict) -> dict:
    """The phase's own model_options plus what the running sampler injected (e.g. CFG++ post-cfg functions)."""
    if passed is slow_base:
        return phase_options
    merged = comfy.model_patcher.create_model_options_clone(phase_options)
    base_post = slow_base.get("sampler_post_cfg_function", [])
    extra_post = passed.get("sampler_post_cfg_function", [])[len(base_post):]
    if extra_post:
        merged["sampler_post_cfg_function"] = merged.get("sampler_post_cfg_function", []) + list(extra_post)
    if passed.get("disable_cfg1_optimization") and not slow_base.get("disable_cfg1_optimization"):
        merged["disable_cfg1_optimization"] = True
    return merged


class _PhaseRouter:
    """The model function the sampler calls: routes each evaluation to the slow or fast guider.

    An evaluation belongs to the step whose sigma interval holds it, so sub-step evaluations (2S, SDE,
    DPM-2 midpoints) stay in their step's phase; one at a schedule point is that step's start. Hence: slow
    while sigma is above the first fast step's starting sigma.
    """

    def __init__(self, slow, fast, slow_options, fast_options, sigmas, switch_step, report, load_fast):
        self.slow, self.fast = slow, fast
        self.slow_options, self.fast_options = slow_options, fast_options
        self.inner_model = slow.inner_model
        self.model_patcher = slow.model_patcher
        self.model_options = slow_options
        self.sigmas = sigmas
        self.switch_step = switch_step
        self.fast_from = float(sigmas[switch_step]) * (1 + 1e-6) + 1e-7 if switch_step < len(sigmas) - 1 else -1.0
        self.report = report
        self.load_fast = load_fast
        self.fast_ready = False
        self.phase_name = "slow"

    def __call__(self, x, sigma, model_options=None, seed=None):
        model_options = self.slow_options if model_options is None else model_options
        sigma_value = float(sigma.flatten()[0])
        if sigma_value > self.fast_from:
            self.report.calls.append((self.phase_name, sigma_value))
            return self.slow(x, sigma, model_options=model_options, seed=seed)
        if not self.fast_ready:
            start = time.perf_counter()
            self.load_fast()
            self.report.switch_seconds = time.perf_counter() - start
            self.report.switch_sigma_value = float(self.sigmas[self.switch_step])
            log.info(self.report.summary())
            self.fast_ready = True
        self.report.calls.append(("fast", sigma_value))
        options = _options_for_phase(self.fast_options, self.slow_options, model_options)
        return self.fast(x, sigma, model_options=options, seed=seed)


def _guider(model, positive, negative, cfg) -> comfy.samplers.CFGGuider:
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def sample_phases(model_slow, model_fast, noise, positive, negative, cfg_slow: float, cfg_fast: float,
                  sampler: comfy.samplers.Sampler, sigmas: torch.Tensor, switch_sigma: float, latent_image,
                  denoise_mask=None, callback=None, disable_pbar=False, seed=None) -> tuple[torch.Tensor, PhaseReport]:
    """Sample once over ``sigmas``; returns the latent (as comfy.sample.sample does) and a PhaseReport."""
    steps = len(sigmas) - 1
    switch_step = first_fast_step(sigmas, switch_sigma)
    report = PhaseReport(steps=steps, switch_step=switch_step)
    result: dict[str, torch.Tensor] = {}

    def run_sampler(router, slow_args, noise_dev, latent_dev, mask_dev):
        result["samples"] = sampler.sample(router, router.sigmas, slow_args, callback, noise_dev, latent_dev,
                                           mask_dev, disable_pbar)
        return result["samples"]

    if switch_step == 0 or switch_step >= steps:
        log.info(report.summary())
        only_fast = switch_step == 0
        guider = _guider(model_fast if only_fast else model_slow, positive, negative, cfg_fast if only_fast else cfg_slow)
        phase = "fast" if only_fast else "slow"

        def enter_single(wrap, args, noise_dev, latent_dev, mask_dev):
            router = _PhaseRouter(wrap, None, args["model_options"], None, sigmas.to(noise_dev.device), steps, report, None)
            router.phase_name = phase
            return run_sampler(router, args, noise_dev, latent_dev, mask_dev)

        out = guider.sample(noise, latent_image, _Relay(enter_single), sigmas, denoise_mask=denoise_mask,
                            disable_pbar=disable_pbar, seed=seed)
        return out.to(comfy.model_management.intermediate_device()), report

    slow = _guider(model_slow, positive, negative, cfg_slow)
    fast = _guider(model_fast, positive, negative, cfg_fast)

    def enter_fast(fast_wrap, fast_args, _noise, _latent, _mask):
        def load_fast():
            comfy.sampler_helpers.prepare_sampling(fast.model_patcher, noise.shape, fast.conds, fast.model_options)

        def enter_slow(slow_wrap, slow_args, noise_dev, latent_dev, mask_dev):
            router = _PhaseRouter(slow_wrap, fast_wrap, slow_args["model_options"], fast_args["model_options"],
                                  sigmas.to(noise_dev.device), switch_step, report, load_fast)
            return run_sampler(router, slow_args, noise_dev, latent_dev, mask_dev)

        # The slow guider processes the raw latent itself; its sampler output is taken raw from `result`, so
        # the fast guider's process_latent_out is the only one applied, as in a single KSampler run.
        slow.sample(noise, latent_image, _Relay(enter_slow), sigmas, denoise_mask=denoise_mask,
                    disable_pbar=disable_pbar, seed=seed)
        return result["samples"]

    out = fast.sample(noise, latent_image, _Relay(enter_fast), sigmas, denoise_mask=denoise_mask,
                      disable_pbar=disable_pbar, seed=seed)
    return out.to(comfy.model_management.intermediate_device()), report
