"""Shared diffusion primitives that methods are built from: the backbone, DDIM, attention control,
Prompt-to-Prompt, prompt alignment, masks, fine-tuning, image encoders. Nothing here is registered;
the registered methods live in `editsweep.methods`, one file each."""
