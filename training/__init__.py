"""One-image LoRA training for Glance (Slow-LoRA / Fast-LoRA).

job (one run start to end) -> recipes (per-architecture defaults; paper_timesteps: the paper's table), data (image,
latent, caption checks), loop (the training loop on the host's sampling path) with adapters (LoRA terms, frozen
base), precision (autocast / loss scaling) and memory (what a run needs on its device); lora_file (the saved file)
and loss_plot (the loss curve).
"""
