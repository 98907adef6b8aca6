"""GlanceLoraLoader: one base model plus a Slow- and a Fast-LoRA give the two models of Glance Phase KSampler."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from .lora_patches import apply_lora_file

NONE = "None"


class GlanceLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        loras = [NONE] + folder_paths.get_filename_list("loras")
        return io.Schema(
            node_id="GlanceLoraLoader",
            display_name="Glance LoRA Loader (slow + fast)",
            category="sampling/glance",
            description=(
                "Applies a Slow-LoRA and a Fast-LoRA to one base model and returns the two experts for Glance "
                "Phase KSampler. The base model is shared, not copied; a LoRA made for another architecture is an error."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model (e.g. Qwen-Image or FLUX.1-dev)."),
                io.Combo.Input("slow_lora", options=loras, tooltip="LoRA for the early, high-noise steps (from models/loras)."),
                io.Float.Input("strength_slow", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the Slow-LoRA (the released Glance files are meant for 1.0)."),
                io.Combo.Input("fast_lora", options=loras, tooltip="LoRA for the late, low-noise steps (from models/loras)."),
                io.Float.Input("strength_fast", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the Fast-LoRA."),
            ],
            outputs=[
                io.Model.Output("model_slow", display_name="model_slow", tooltip="Base + Slow-LoRA: connect to model_slow."),
                io.Model.Output("model_fast", display_name="model_fast", tooltip="Base + Fast-LoRA: connect to model_fast."),
            ],
        )

    @classmethod
    def validate_inputs(cls, slow_lora=None, fast_lora=None):
        # The host does not check V3 combo values against their options: an unknown file must still be a node error.
        available = set(folder_paths.get_filename_list("loras"))
        for name, value in (("slow_lora", slow_lora), ("fast_lora", fast_lora)):
            if value is not None and value != NONE and value not in available:
                return f"{name}: '{value}' is not in models/loras; put the file there (then refresh the page) or pick another LoRA."
        return True

    @classmethod
    def execute(cls, model, slow_lora, strength_slow, fast_lora, strength_fast) -> io.NodeOutput:
        slow = model.clone() if slow_lora == NONE or strength_slow == 0 else apply_lora_file(model, "slow_lora", slow_lora, strength_slow)
        fast = model.clone() if fast_lora == NONE or strength_fast == 0 else apply_lora_file(model, "fast_lora", fast_lora, strength_fast)
        return io.NodeOutput(slow, fast)
