"""GlanceLoraLoader: one base model plus a Slow- and a Fast-LoRA give the two models of Glance Phase KSampler."""
from __future__ import annotations

from comfy_api.latest import io

from ..sampling.forward_experts import forward_expert_clones
from ..sampling.lora_patches import lora_file_patches
from .common.folders import list_loras, lora_file

NONE = "None"
APPLY_MODES = ["forward", "merged"]


class GlanceLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        loras = [NONE] + list_loras()
        return io.Schema(
            node_id="GlanceLoraLoader",
            display_name="Glance LoRA Loader (slow + fast)",
            category="sampling/glance",
            description=(
                "Applies a Slow-LoRA and a Fast-LoRA to one base model and returns the two experts for Glance "
                "Phase KSampler. The base model is shared, not copied: by default each expert is added in the forward "
                "pass, so the switch moves no weight. A LoRA made for another architecture is an error."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model (e.g. Qwen-Image or FLUX.1-dev)."),
                io.Combo.Input("slow_lora", options=loras, tooltip="LoRA for the early, high-noise steps (from models/loras)."),
                io.Float.Input("strength_slow", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the Slow-LoRA (the released Glance files are meant for 1.0)."),
                io.Combo.Input("fast_lora", options=loras, tooltip="LoRA for the late, low-noise steps (from models/loras)."),
                io.Float.Input("strength_fast", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the Fast-LoRA."),
                io.Combo.Input("apply", options=APPLY_MODES, default="forward", optional=True,
                               tooltip="forward: each expert's low-rank term is added in the forward pass; the shared base "
                                       "weights are never written and the switch moves no weight. merged: each expert "
                                       "is merged into the weights (ComfyUI's LoraLoader way): re-merged at every switch."),
            ],
            outputs=[
                io.Model.Output("model_slow", display_name="model_slow", tooltip="Base + Slow-LoRA: connect to model_slow."),
                io.Model.Output("model_fast", display_name="model_fast", tooltip="Base + Fast-LoRA: connect to model_fast."),
            ],
        )

    @classmethod
    def validate_inputs(cls, slow_lora=None, fast_lora=None):
        # The host does not check V3 combo values against their options: an unknown file must still be a node error.
        available = set(list_loras())
        missing = [f"{name}: '{value}'" for name, value in (("slow_lora", slow_lora), ("fast_lora", fast_lora))
                   if value is not None and value != NONE and value not in available]
        if missing:
            return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in models/loras; put the "
                    f"{'file' if len(missing) == 1 else 'files'} there (then refresh the page) or pick another LoRA.")
        return True

    @classmethod
    def execute(cls, model, slow_lora, strength_slow, fast_lora, strength_fast, apply="forward") -> io.NodeOutput:
        if apply not in APPLY_MODES:
            raise ValueError(f"apply: '{apply}' is not one of {APPLY_MODES}.")
        problem = cls.validate_inputs(slow_lora=slow_lora, fast_lora=fast_lora)
        if problem is not True:
            raise FileNotFoundError(problem)
        experts = {}
        for name, input_name, file_name, strength in (("slow", "slow_lora", slow_lora, strength_slow),
                                                      ("fast", "fast_lora", fast_lora, strength_fast)):
            used = file_name != NONE and strength != 0
            patches = lora_file_patches(model, lora_file(input_name, file_name), f"{input_name} '{file_name}'") if used else {}
            experts[name] = (patches, strength)
        if apply == "merged":
            clones = {}
            for name, (patches, strength) in experts.items():
                clones[name] = model.clone()
                if patches:
                    clones[name].add_patches(patches, strength)
        else:
            clones, _ = forward_expert_clones(model, experts)
        return io.NodeOutput(clones["slow"], clones["fast"])
