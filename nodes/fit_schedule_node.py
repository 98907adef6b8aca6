"""GlanceFitSchedule: a few-step schedule fitted to the user's model from its own fine-step sampling."""
from __future__ import annotations

import logging

import comfy.samplers
import comfy.utils
from comfy_api.latest import io, ui

from . import schedule_files
from .input_checks import check_latent_fits, check_prompts, latent_resolution, single_empty_latent
from .schedule_fit import FitSettings, fit_schedule, model_identity, schedule_record
from .schedules import SWITCH_SIGMA_MAX, switch_sigma_problem
from .sigma_plot import plot_sigmas

log = logging.getLogger("comfyui-glance")
AUTO_SWITCH = 0.0


class GlanceFitSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlanceFitSchedule",
            display_name="Glance Fit Schedule",
            category="sampling/glance",
            description=(
                "Fits a few-step schedule to YOUR model, no training and no image: the model samples a few images "
                "on a fine schedule (e.g. 50 steps), and the fit picks the steps_slow + steps_fast points of that "
                "schedule whose big Euler steps stay closest to the fine run. Costs about as much as sampling "
                "'rollouts' images at fine_steps. Saves the schedule in models/glance_schedules, where Glance "
                "Sigmas lists it as a preset."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to fit the schedule to (with any LoRAs or patches you sample with)."),
                io.Conditioning.Input("positive", tooltip="A typical prompt. Several prompts: join them with Conditioning (Combine); "
                                                          "each entry is then one prompt and the rollouts take turns."),
                io.Conditioning.Input("negative", tooltip="The negative prompt you sample with (unused at cfg 1.0)."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="The CFG scale you sample with: the schedule is fitted to the guided model."),
                io.Latent.Input("latent_image", tooltip="An empty latent of the size you generate at (only its size is used)."),
                io.Int.Input("steps_slow", default=5, min=1, max=1000, tooltip="Steps of the slow (first, high-noise) phase."),
                io.Int.Input("steps_fast", default=5, min=1, max=1000, tooltip="Steps of the fast (last, low-noise) phase."),
                io.Int.Input("fine_steps", default=50, min=2, max=1000,
                             tooltip="Steps of the reference run; the fitted steps are points of its schedule."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="The scheduler of the fine schedule (and of the plain schedule it is compared with)."),
                io.Int.Input("rollouts", default=8, min=1, max=1000,
                             tooltip="Images the model samples on the fine schedule to measure its step errors (8 is plenty for one prompt)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Rollout r starts from the noise of seed + r (as KSampler with that seed)."),
                io.Float.Input("switch_sigma", default=AUTO_SWITCH, min=0.0, max=SWITCH_SIGMA_MAX, step=0.001, round=0.0001,
                               optional=True,
                               tooltip="0: the fit places the switch (after steps_slow steps of the best path). Above 0: the slow "
                                       "steps stay above the fine point nearest this sigma, the fast steps below it."),
                io.String.Input("save_name", default="", optional=True,
                                tooltip="File name in models/glance_schedules (subfolders allowed, .json added; an existing "
                                        "file of that name is replaced). Empty: named after the model, size, cfg and steps."),
                io.Model.Input("model_low_noise", optional=True,
                               tooltip="Optional second model, e.g. Wan 2.2 A14B's low-noise expert (then 'model' is the "
                                       "high-noise one): the teacher is the pair, handing over at handover_sigma, and the "
                                       "schedule switches there, as Glance Phase KSampler will sample with the two."),
                io.Float.Input("handover_sigma", default=0.875, min=0.0, max=SWITCH_SIGMA_MAX, step=0.001, round=0.0001,
                               optional=True,
                               tooltip="With model_low_noise: the sigma where the pair hands over (Wan 2.2 A14B: 0.875 "
                                       "text-to-video, 0.9 image-to-video). Unused without a second model."),
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
    def validate_inputs(cls, switch_sigma=None):
        if switch_sigma is not None and (problem := switch_sigma_problem(switch_sigma)):
            return problem
        return True

    @classmethod
    def execute(cls, model, positive, negative, cfg, latent_image, steps_slow, steps_fast, fine_steps, scheduler,
                rollouts, seed, switch_sigma=AUTO_SWITCH, save_name="", model_low_noise=None,
                handover_sigma=0.875) -> io.NodeOutput:
        problem = switch_sigma_problem(switch_sigma)
        if problem:
            raise ValueError(problem)
        if model_low_noise is not None:
            problem = switch_sigma_problem(handover_sigma, "handover_sigma")
            if problem:
                raise ValueError(problem)
            if switch_sigma != AUTO_SWITCH and abs(float(switch_sigma) - float(handover_sigma)) > 1e-6:
                raise ValueError(
                    f"switch_sigma={switch_sigma:g} differs from handover_sigma={handover_sigma:g}: with model_low_noise "
                    "the slow phase is the first model's and the fast phase the second's, so the schedule switches where "
                    "the pair hands over. Set switch_sigma to 0 (or to handover_sigma).")
            switch_sigma = float(handover_sigma)
        settings = FitSettings(cfg=float(cfg), steps_slow=int(steps_slow), steps_fast=int(steps_fast),
                               fine_steps=int(fine_steps), scheduler=scheduler, rollouts=int(rollouts), seed=int(seed),
                               switch_sigma=None if switch_sigma == AUTO_SWITCH else float(switch_sigma))
        prompts = check_prompts(model, positive, negative)
        latent = single_empty_latent(model, latent_image)
        if model_low_noise is not None:
            check_prompts(model_low_noise, positive, negative)
            check_latent_fits(model_low_noise, latent, "model_low_noise")
        if settings.switch_sigma is not None:
            ms = model.get_model_object("model_sampling")
            top = float(ms.sigma_max)
            if not 0.0 < settings.switch_sigma < top:
                raise ValueError(f"switch_sigma={settings.switch_sigma:g} is outside this model's sigma range (0, {top:g}); "
                                 "give a sigma inside it, or 0 to let the fit place the switch.")
        identity = model_identity(model)
        resolution = latent_resolution(latent, model)
        if save_name and save_name.strip():
            file_name, path = schedule_files.resolve_save_path(save_name)
        else:
            file_name, path = schedule_files.resolve_save_path(schedule_files.auto_name(
                identity["model_class"], identity["fingerprint"], *resolution, settings.cfg, settings.steps_slow,
                settings.steps_fast))

        total = settings.rollouts * settings.fine_steps
        bar = comfy.utils.ProgressBar(total, node_id=cls.hidden.unique_id if cls.hidden else None)

        def on_step(done):
            bar.update_absolute(done, total)

        log.info("Glance fit: %d rollouts of %d %s steps at cfg %g, %dx%d px, %d prompt(s)", settings.rollouts,
                 settings.fine_steps, settings.scheduler, settings.cfg, *resolution, len(prompts))
        fit = fit_schedule(model, prompts, negative, latent, settings, on_step, low_noise=model_low_noise)
        record = schedule_record(fit, settings, identity, resolution, len(prompts))
        schedule_files.save(record, path)
        plain = f"{fit.plain_error:.4g}" if fit.plain_error is not None else "n/a (not on the fine schedule)"
        log.info("Glance fit: %d model passes in %.1f s; %d slow + %d fast steps at %s, switch sigma %.4f; local Euler "
                 "error %.4g (plain %s: %s); saved %s", fit.model_passes, fit.seconds, settings.steps_slow,
                 settings.steps_fast, [round(float(s), 4) for s in fit.sigmas], fit.switch_sigma, fit.fit_error,
                 settings.scheduler, plain, file_name)
        title = f"fitted {settings.steps_slow}+{settings.steps_fast}: error {fit.fit_error:.3g}"
        if fit.plain_error is not None:
            title += f" (plain {fit.plain_error:.3g})"
        plot = plot_sigmas(fit.sigmas, fit.switch_sigma, title, reference=fit.plain_sigmas,
                           reference_label=f"plain {settings.scheduler}")
        return io.NodeOutput(fit.sigmas, fit.switch_sigma, plot, ui=ui.PreviewImage(plot, cls=cls))
