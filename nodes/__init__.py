"""The pack's ComfyUI nodes (V3 schema). Node ids and input names are a public contract: never rename them."""
from .distill_experts import GlanceDistillExperts
from .fit_schedule import GlanceFitSchedule
from .lora_loader import GlanceLoraLoader
from .phase_sampler import GlancePhaseGuider, GlancePhaseKSampler
from .sigmas import GlanceSigmas
from .train_lora import GlanceTrainLoRA

NODE_LIST = [GlancePhaseKSampler, GlancePhaseGuider, GlanceSigmas, GlanceLoraLoader, GlanceTrainLoRA, GlanceFitSchedule,
             GlanceDistillExperts]
