"""LoRA training for Glance: the one-image trainer (Slow-LoRA / Fast-LoRA) and the expert distiller.

job (each node's one call: defaults, checks, the run, the files) -> trainer (flow-matching on one image) and distill
(experts from the model's own rollouts, sampling/teacher.py), both in one run session (session: the plan, the full
load, the run inside the host's sampling, the NaN check, adapters to the CPU) with one settings type (settings);
below them adapters (LoRA terms, frozen base), blocks (checkpointing), optim, precision, memory; recipes
(per-architecture defaults; the paper's table is schedules/paper_timesteps.py), data (image, latent, caption checks)
and lora_file (the saved file).
"""
