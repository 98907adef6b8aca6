"""GlanceSigmas: the published Glance schedules, or a slow/fast split of the model's own scheduler."""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io, ui

from .schedules import (PRESET_NAMES, PRESETS, SPLIT, SWITCH_SIGMA_MAX, preset_sigmas, split_sigmas,
                        switch_sigma_problem, validate_switch_sigma)
from .sigma_plot import plot_sigmas

DENSE_STEPS = 1000


class GlanceSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlanceSigmas",
            display_name="Glance Sigmas",
            category="sampling/glance",
            description=(
                "Sigma schedule for Glance Phase KSampler. Presets give the paper's 5 slow + 5 fast steps for "
                "Qwen-Image and FLUX.1-dev with their switch sigma; 'split_from_model_scheduler' places steps_slow "
                "steps above switch_sigma and steps_fast below it along the model's own scheduler."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model whose sampling (shift) and scheduler define the split schedule."),
                io.Combo.Input("preset", options=PRESET_NAMES, default=PRESET_NAMES[0],
                               tooltip="A published Glance schedule, or a split of the model's own scheduler."),
                io.Int.Input("steps_slow", default=5, min=1, max=1000,
                             tooltip="Split mode: dense steps above switch_sigma (semantics)."),
                io.Int.Input("steps_fast", default=5, min=1, max=1000,
                             tooltip="Split mode: large steps below switch_sigma (detail)."),
                io.Float.Input("switch_sigma", default=0.9, min=0.0, max=SWITCH_SIGMA_MAX, step=0.001, round=0.0001,
                               tooltip="Split mode: the sigma where the slow phase ends. Presets bring their own."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="Split mode: the scheduler whose curve the steps follow."),
            ],
            outputs=[
                io.Sigmas.Output(display_name="SIGMAS", tooltip="Connect to Glance Phase KSampler's sigmas."),
                io.Float.Output(display_name="switch_sigma", tooltip="Connect to Glance Phase KSampler's switch_sigma."),
                io.Image.Output(display_name="plot", tooltip="The schedule, slow steps blue, fast orange, switch dashed (also previewed on the node)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, switch_sigma=None):
        # Taking switch_sigma here turns off the host's min/max check for it: check the range here (NaN included).
        if switch_sigma is not None and (problem := switch_sigma_problem(switch_sigma)):
            return problem
        return True

    @classmethod
    def execute(cls, model, preset, steps_slow, steps_fast, switch_sigma, scheduler) -> io.NodeOutput:
        if preset in PRESETS:
            sigmas, switch = preset_sigmas(preset)
            title = PRESETS[preset].name
        elif preset == SPLIT:
            switch = validate_switch_sigma(switch_sigma)
            model_sampling = model.get_model_object("model_sampling")
            dense = comfy.samplers.calculate_sigmas(model_sampling, scheduler, DENSE_STEPS)
            sigmas = split_sigmas(dense, switch, steps_slow, steps_fast)
            title = f"{scheduler}: {steps_slow} slow + {steps_fast} fast"
        else:
            raise ValueError(f"preset={preset!r} is unknown; choose one of {', '.join(PRESET_NAMES)}.")
        plot = plot_sigmas(sigmas, switch, title)
        return io.NodeOutput(sigmas, switch, plot, ui=ui.PreviewImage(plot, cls=cls))
