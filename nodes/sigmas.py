"""GlanceSigmas: the published Glance schedules, a slow/fast split of the model's own scheduler, or a fitted one."""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..schedules.files import FOLDER, SUFFIX, load_schedule
from ..schedules.presets import BOUNDARY_SPLITS, PRESET_NAMES, PRESETS, SPLIT, preset_sigmas, split_sigmas
from ..schedules.records import model_identity
from ..schedules.switch import validate_switch_sigma
from .common.folders import list_schedules, schedule_file
from .common.inputs import scheduler_input, switch_sigma_input, validate_inputs
from .common.previews import plot_sigmas, with_preview

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
                "steps above switch_sigma and steps_fast below it along the model's own scheduler; the wan22_* "
                "presets do the same with the switch held at Wan 2.2's expert boundary (0.875 T2V, 0.9 I2V). Schedules saved by "
                "Glance Fit Schedule (models/glance_schedules/*.json) are listed after the built-in presets."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model whose sampling (shift) and scheduler define the split schedule."),
                io.Combo.Input("preset", options=[*PRESET_NAMES, *list_schedules()], default=PRESET_NAMES[0],
                               tooltip="A published Glance schedule, a split of the model's own scheduler, or a schedule "
                                       "fitted to a model by Glance Fit Schedule (.json, from models/glance_schedules)."),
                io.Int.Input("steps_slow", default=5, min=1, max=1000,
                             tooltip="Split mode: dense steps above switch_sigma (semantics)."),
                io.Int.Input("steps_fast", default=5, min=1, max=1000,
                             tooltip="Split mode: large steps below switch_sigma (detail)."),
                switch_sigma_input("Split mode: the sigma where the slow phase ends. Presets bring their own."),
                scheduler_input("Split mode: the scheduler whose curve the steps follow."),
            ],
            outputs=[
                io.Sigmas.Output(display_name="SIGMAS", tooltip="Connect to Glance Phase KSampler's sigmas."),
                io.Float.Output(display_name="switch_sigma", tooltip="Connect to Glance Phase KSampler's switch_sigma."),
                io.Image.Output(display_name="plot", tooltip="The schedule, slow steps blue, fast orange, switch dashed (also previewed on the node)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, switch_sigma=None, preset=None):
        # The host does not check V3 combo values against their options: an unknown preset must still be a node error.
        unknown = preset is not None and preset not in PRESET_NAMES and preset not in list_schedules()
        return validate_inputs(switch_sigma, unknown and (
            f"preset: '{preset}' is neither a built-in preset nor a schedule in models/{FOLDER}; "
            "fit one with Glance Fit Schedule (then refresh the page) or pick another preset."))

    @classmethod
    def execute(cls, model, preset, steps_slow, steps_fast, switch_sigma, scheduler) -> io.NodeOutput:
        if preset in PRESETS:
            sigmas, switch = preset_sigmas(preset)
            title = PRESETS[preset].name
        elif preset == SPLIT or preset in BOUNDARY_SPLITS:
            switch = BOUNDARY_SPLITS[preset] if preset in BOUNDARY_SPLITS else validate_switch_sigma(switch_sigma)
            model_sampling = model.get_model_object("model_sampling")
            dense = comfy.samplers.calculate_sigmas(model_sampling, scheduler, DENSE_STEPS)
            sigmas = split_sigmas(dense, switch, steps_slow, steps_fast)
            title = f"{scheduler}: {steps_slow} slow + {steps_fast} fast" + (f" (Wan 2.2 boundary {switch:g})" if preset in BOUNDARY_SPLITS else "")
        elif preset.lower().endswith(SUFFIX):
            sigma_max = getattr(model.get_model_object("model_sampling"), "sigma_max", None)
            sigmas, switch = load_schedule(schedule_file(preset), preset, model_identity(model),
                                           None if sigma_max is None else float(sigma_max))
            title = f"fitted: {preset}"
        else:
            raise ValueError(f"preset={preset!r} is unknown; choose one of {', '.join(PRESET_NAMES)}.")
        plot = plot_sigmas(sigmas, switch, title)
        return with_preview(cls, sigmas, switch, plot, image=plot)
