"""GlanceSigmas: the published Glance schedules, or a slow/fast split of the model's own scheduler."""
from __future__ import annotations

import logging

import comfy.samplers
from comfy_api.latest import io, ui

from . import schedule_files
from .schedule_fit import identity_differences, model_identity, schedule_from_record
from .schedules import (BOUNDARY_SPLITS, PRESET_NAMES, PRESETS, SPLIT, SWITCH_SIGMA_MAX, preset_sigmas, split_sigmas,
                        switch_sigma_problem, validate_switch_sigma)
from .sigma_plot import plot_sigmas

DENSE_STEPS = 1000
log = logging.getLogger("comfyui-glance")


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
                io.Combo.Input("preset", options=[*PRESET_NAMES, *schedule_files.list_schedules()], default=PRESET_NAMES[0],
                               tooltip="A published Glance schedule, a split of the model's own scheduler, or a schedule "
                                       "fitted to a model by Glance Fit Schedule (.json, from models/glance_schedules)."),
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
    def validate_inputs(cls, switch_sigma=None, preset=None):
        # Taking switch_sigma here turns off the host's min/max check for it: check the range here (NaN included).
        if switch_sigma is not None and (problem := switch_sigma_problem(switch_sigma)):
            return problem
        # The host does not check V3 combo values against their options: an unknown preset must still be a node error.
        if preset is not None and preset not in PRESET_NAMES and preset not in schedule_files.list_schedules():
            return (f"preset: '{preset}' is neither a built-in preset nor a schedule in models/{schedule_files.FOLDER}; "
                    "fit one with Glance Fit Schedule (then refresh the page) or pick another preset.")
        return True

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
        elif preset.lower().endswith(schedule_files.SUFFIX):
            sigmas, switch = saved_schedule(model, preset)
            title = f"fitted: {preset}"
        else:
            raise ValueError(f"preset={preset!r} is unknown; choose one of {', '.join(PRESET_NAMES)}.")
        plot = plot_sigmas(sigmas, switch, title)
        return io.NodeOutput(sigmas, switch, plot, ui=ui.PreviewImage(plot, cls=cls))


def saved_schedule(model, name: str):
    """(SIGMAS, switch sigma) of a saved schedule; a warning when it was fitted to a different model."""
    record = schedule_files.load(name)
    try:
        sigmas, switch = schedule_from_record(record)
    except ValueError as e:
        raise ValueError(f"preset: '{name}' in models/{schedule_files.FOLDER} is not usable: {e}. Fit it again with "
                         "Glance Fit Schedule.") from None
    differences = identity_differences(record.get("model") or {}, model_identity(model))
    if differences:
        log.warning("Glance Sigmas: schedule '%s' was fitted to another model (%s); it may sample worse here than on "
                    "the model it was fitted to.", name, "; ".join(differences))
    return sigmas, switch
