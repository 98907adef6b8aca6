"""One-image LoRA training for Glance (Slow-LoRA / Fast-LoRA): recipes, data, the loop, the saved file, the loss plot."""
