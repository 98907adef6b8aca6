"""GlancePhaseKSampler: KSampler with two models, the slow one above a switch sigma and the fast one below."""
from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..host_compat import fix_empty_latent, sampled_latent
from ..sampling.phase_guider import PhaseGuider
from ..schedules.checks import MAX_STEPS, check_sigmas, finite
from ..schedules.switch import validate_switch_sigma
from .common.inputs import (check_cfg, check_latent_fits, phase_cfg_inputs, phase_model_inputs, seed_input,
                            switch_sigma_input, validate_inputs)

STEPS_MAX = MAX_STEPS


def _check_phases(switch_sigma, cfg_slow, cfg_fast) -> None:
    validate_switch_sigma(switch_sigma)
    check_cfg("cfg_slow", cfg_slow)
    check_cfg("cfg_fast", cfg_fast)


def _check_run(steps, latent, sigmas, denoise=1.0) -> None:
    if sigmas is None and not 0.0 <= finite(denoise, "denoise", "use 0..1 (1.0: the whole schedule)") <= 1.0:
        raise ValueError(f"denoise={denoise!r}: use 0..1 (1.0: the whole schedule; below it for image-to-image).")
    if sigmas is not None:
        check_sigmas(sigmas, "sigmas")
    if sigmas is None and steps < 1:
        raise ValueError(f"steps={steps}: use at least 1 step, or connect a SIGMAS schedule (e.g. from GlanceSigmas).")
    if sigmas is not None and (sigmas.ndim != 1 or len(sigmas) < 2):
        raise ValueError("sigmas: the connected schedule has no steps (it needs at least 2 values, e.g. [1.0, 0.0]).")
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("latent_image: expected a LATENT (connect Empty Latent Image or VAE Encode).")


class GlancePhaseKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlancePhaseKSampler",
            display_name="Glance Phase KSampler",
            category="sampling/glance",
            description=(
                "KSampler with two models in one sampling pass: steps that start above switch_sigma run on "
                "model_slow with cfg_slow (semantics), the rest on model_fast with cfg_fast (detail). Multistep "
                "and ancestral samplers keep their history and noise across the switch. cfg 1.0 in a phase skips "
                "its negative pass. Works with Glance Slow/Fast LoRAs, a light and a full backbone, or Wan 2.2 experts."
            ),
            inputs=[
                *phase_model_inputs(),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (an empty latent for text-to-image)."),
                seed_input("Seed of the initial noise (and of ancestral/SDE noise).", control_after_generate=True),
                io.Int.Input("steps", default=10, min=1, max=STEPS_MAX,
                             tooltip="Total steps when no sigmas are connected; the scheduler spreads them over the model's sigma range."),
                switch_sigma_input("Steps starting above this sigma use model_slow, the rest model_fast. Flow models run "
                                   "from sigma 1 to 0; the Glance presets switch near 0.9. Outside the schedule, one phase runs alone."),
                *phase_cfg_inputs("CFG scale of the slow phase (the paper uses true CFG 5 for Qwen-Image)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler for the whole run (one continuous pass across the switch)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="Scheduler used when no sigmas are connected (computed from model_slow's sampling)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run (below 1.0 for image-to-image); ignored when sigmas are connected."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional schedule (e.g. from Glance Sigmas); overrides steps, scheduler and denoise."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The denoised latent.")],
        )

    @classmethod
    def validate_inputs(cls, switch_sigma=None, steps=None):
        bad_steps = steps is not None and not 1 <= steps <= STEPS_MAX
        return validate_inputs(switch_sigma, f"steps={steps}: use 1 to {STEPS_MAX} steps." if bad_steps else None)

    @classmethod
    def execute(cls, model_slow, model_fast, positive, negative, latent_image, seed, steps, switch_sigma, cfg_slow,
                cfg_fast, sampler_name, scheduler, denoise=1.0, sigmas=None) -> io.NodeOutput:
        _check_phases(switch_sigma, cfg_slow, cfg_fast)
        _check_run(steps, latent_image, sigmas, denoise)
        latent = fix_empty_latent(model_slow, latent_image)
        check_latent_fits(model_slow, latent, "model_slow")
        check_latent_fits(model_fast, latent, "model_fast")

        if sigmas is None:
            sigmas = comfy.samplers.KSampler(model_slow, steps=steps, device=model_slow.load_device, sampler=sampler_name,
                                             scheduler=scheduler, denoise=denoise, model_options=model_slow.model_options).sigmas
        sigmas = sigmas.detach().float().cpu()
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        callback = latent_preview.prepare_callback(model_slow, len(sigmas) - 1)
        guider = PhaseGuider(model_slow, model_fast, switch_sigma, cfg_slow, cfg_fast)
        guider.set_conds(positive, negative)
        samples = guider.sample(noise, latent, comfy.samplers.sampler_object(sampler_name), sigmas,
                                denoise_mask=latent_image.get("noise_mask"), callback=callback,
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        return io.NodeOutput(sampled_latent(latent_image, samples))


class GlancePhaseGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlancePhaseGuider",
            display_name="Glance Phase Guider",
            category="sampling/glance",
            description=(
                "The two-model guidance of Glance Phase KSampler as a GUIDER for SamplerCustomAdvanced: pair it with "
                "any sampler, sigmas (e.g. Glance Sigmas) and noise. Steps that start above switch_sigma run on "
                "model_slow with cfg_slow, the rest on model_fast with cfg_fast, in one sampling pass."
            ),
            inputs=[
                *phase_model_inputs(),
                *phase_cfg_inputs("CFG scale of the slow phase."),
                switch_sigma_input("Steps starting above this sigma use model_slow, the rest model_fast "
                                   "(connect Glance Sigmas' switch_sigma)."),
            ],
            outputs=[io.Guider.Output(display_name="GUIDER", tooltip="Connect to SamplerCustomAdvanced's guider.")],
        )

    @classmethod
    def validate_inputs(cls, switch_sigma=None):
        return validate_inputs(switch_sigma)

    @classmethod
    def execute(cls, model_slow, model_fast, positive, negative, cfg_slow, cfg_fast, switch_sigma) -> io.NodeOutput:
        _check_phases(switch_sigma, cfg_slow, cfg_fast)
        guider = PhaseGuider(model_slow, model_fast, switch_sigma, cfg_slow, cfg_fast)
        guider.set_conds(positive, negative)
        return io.NodeOutput(guider)
