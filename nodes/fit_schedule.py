"""GlanceFitSchedule: a few-step schedule fitted to the user's model from its own fine-step sampling."""
from __future__ import annotations

from comfy_api.latest import io

from ..sampling import teacher
from ..sampling.sampler_schedule import fit_and_save
from ..sampling.schedule_fit import FitSettings
from ..schedules.switch import validate_switch_sigma
from .common.folders import schedules_dir
from .common.inputs import (AUTO_SWITCH, cfg_input, check_low_noise, check_prompts, low_noise_inputs, sampler_input,
                            sampler_problem, scheduler_input, seed_input, single_empty_latent, size_latent_input, switch_sigma_input, validate_inputs)
from .common.previews import plot_sigmas, with_preview
from .common.progress import NodeProgress


ROLLOUTS = 4  # with the default teacher (sampling/teacher.py), a fit within 16 fifty-step images


class GlanceFitSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlanceFitSchedule",
            display_name="Glance Fit Schedule",
            category="sampling/glance",
            description=(
                "Fits a few-step schedule to YOUR model and sampler, no training and no image: the model samples a "
                "few images on a fine schedule (e.g. 100 steps, a converged second-order teacher), and the fit picks "
                "the steps_slow + steps_fast points of that schedule whose steps of sampler_name (its multistep "
                "history included) stay closest to the fine run. Best from several prompts (Conditioning (Combine)). "
                "At the defaults (4 rollouts of 100 steps, 5 + 5 steps) it costs at most as much as sampling 16 images "
                "at 50 steps, the search and a check included. Saves the schedule "
                "in models/glance_schedules, where Glance Sigmas lists it as a preset."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to fit the schedule to (with any LoRAs or patches you sample with)."),
                io.Conditioning.Input("positive", tooltip="Typical prompts. Recommended: several (e.g. 4-8 typical prompts joined "
                                                          "with Conditioning (Combine); each entry is then one prompt and the "
                                                          "rollouts take turns): a schedule fitted to one prompt fits mostly that prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt you sample with (unused at cfg 1.0)."),
                cfg_input("cfg", "The CFG scale you sample with: the schedule is fitted to the guided model."),
                size_latent_input(),
                io.Int.Input("steps_slow", default=5, min=1, max=1000, tooltip="Steps of the slow (first, high-noise) phase."),
                io.Int.Input("steps_fast", default=5, min=1, max=1000, tooltip="Steps of the fast (last, low-noise) phase."),
                io.Int.Input("fine_steps", default=teacher.FINE_STEPS, min=2, max=1000,
                             tooltip="Steps of the reference run (the teacher); the fitted steps are points of its schedule. "
                                     "The log and the schedule file say whether it was converged for this fit."),
                scheduler_input("The scheduler of the fine schedule (and of the plain schedule it is compared with). "
                                "kl_optimal: its teacher converges in fewer steps than simple's.", default=teacher.FINE_SCHEDULER),
                io.Int.Input("rollouts", default=ROLLOUTS, min=1, max=1000,
                             tooltip="Images the model samples on the fine schedule to measure its step errors (they take "
                                     "turns over the joined prompts: at least one per prompt; the path follows the first 4, "
                                     "its refinement the first 2)."),
                seed_input("Rollout r starts from the noise of seed + r (as KSampler with that seed)."),
                switch_sigma_input("0: the fit places the switch (after steps_slow steps of the best path). Above 0: the "
                                   "slow steps stay above the fine point nearest this sigma, the fast steps below it.",
                                   default=AUTO_SWITCH, optional=True),
                io.String.Input("save_name", default="", optional=True,
                                tooltip="File name in models/glance_schedules (subfolders allowed, .json added; an existing "
                                        "file of that name is replaced). Empty: named after the model, size, cfg and steps."),
                sampler_input("the fit minimises that sampler's own error, multistep history included."),
                *low_noise_inputs(),
            ],
            outputs=[
                io.Sigmas.Output(display_name="SIGMAS", tooltip="The fitted schedule: connect to Glance Phase KSampler's sigmas."),
                io.Float.Output(display_name="switch_sigma", tooltip="Between the last slow and the first fast step: connect to switch_sigma."),
                io.Image.Output(display_name="plot", tooltip="The fitted schedule (slow blue, fast orange, switch dashed) over the plain one (grey)."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, switch_sigma=None, sampler_name=None):
        return validate_inputs(switch_sigma, sampler_problem(sampler_name))

    @classmethod
    def execute(cls, model, positive, negative, cfg, latent_image, steps_slow, steps_fast, fine_steps, scheduler,
                rollouts, seed, switch_sigma=AUTO_SWITCH, save_name="", sampler_name="euler", model_low_noise=None,
                handover_sigma=0.875) -> io.NodeOutput:
        switch = validate_switch_sigma(switch_sigma)
        if model_low_noise is not None:
            switch = _pair_switch(switch, handover_sigma)
        settings = FitSettings(cfg=float(cfg), steps_slow=int(steps_slow), steps_fast=int(steps_fast),
                               fine_steps=int(fine_steps), scheduler=scheduler, rollouts=int(rollouts), seed=int(seed),
                               switch_sigma=None if switch == AUTO_SWITCH else switch)
        prompts = check_prompts(model, positive, negative)
        latent = single_empty_latent(model, latent_image)
        check_low_noise(model_low_noise, positive, negative, latent)
        fit = fit_and_save(model, prompts, negative, latent, settings, schedules_dir(), save_name, sampler_name,
                           NodeProgress(cls), low_noise=model_low_noise).fit
        title = f"fitted {settings.steps_slow}+{settings.steps_fast}: error {fit.fit_error:.3g}"
        if fit.plain_error is not None:
            title += f" (plain {fit.plain_error:.3g})"
        plot = plot_sigmas(fit.sigmas, fit.switch_sigma, title, reference=fit.plain_sigmas,
                           reference_label=f"plain {settings.scheduler}")
        return with_preview(cls, fit.sigmas, fit.switch_sigma, plot, image=plot)


def _pair_switch(switch_sigma: float, handover_sigma: float) -> float:
    """The switch of a fit for a pair of experts: where the pair hands over (the slow phase is the first model's)."""
    handover = validate_switch_sigma(handover_sigma, "handover_sigma")
    if switch_sigma != AUTO_SWITCH and abs(switch_sigma - handover) > 1e-6:
        raise ValueError(
            f"switch_sigma={switch_sigma:g} differs from handover_sigma={handover:g}: with model_low_noise the slow "
            "phase is the first model's and the fast phase the second's, so the schedule switches where the pair "
            "hands over. Set switch_sigma to 0 (or to handover_sigma).")
    return handover
