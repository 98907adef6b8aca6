"""Sample-time logic below the nodes: the phase guider, forward experts, LoRA patches, teacher rollouts, the fit."""
