"""The pack's ComfyUI nodes (V3 schema). Node ids and input names are a public contract: never rename them."""
from .distill_node import GlanceDistillExperts
from .fit_schedule_node import GlanceFitSchedule
from .lora_loader import GlanceLoraLoader
from .phase_sampler import GlancePhaseGuider, GlancePhaseKSampler
from .sigmas_node import GlanceSigmas
from .train_node import GlanceTrainLoRA

NODE_LIST = [GlancePhaseKSampler, GlancePhaseGuider, GlanceSigmas, GlanceLoraLoader, GlanceTrainLoRA, GlanceFitSchedule,
             GlanceDistillExperts]
