"""The toy models' training settings (`editsweep toy train` flags), apart from the training code so
that the command line builds its parser without importing torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Step counts and sizes of the three stages; the defaults fit in an hour on a 2-core CPU."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="seeds the scene pool, the initialisation and every batch")
    pool: int = Field(20000, ge=1, description="rendered training scenes")
    vae_steps: int = Field(1200, ge=1, description="VAE optimiser steps")
    vae_batch: int = Field(32, ge=1, description="VAE batch size")
    vae_lr: float = Field(1e-3, gt=0, description="VAE peak learning rate")
    unet_steps: int = Field(2800, ge=1, description="UNet + text encoder optimiser steps")
    unet_batch: int = Field(64, ge=1, description="UNet batch size")
    unet_lr: float = Field(1e-3, gt=0, description="UNet + text encoder peak learning rate")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay of the saved UNet + text encoder")
    decoder_steps: int = Field(1500, ge=0, description="VAE decoder fine-tuning steps (encoder frozen)")
    decoder_lr: float = Field(5e-4, gt=0, description="decoder fine-tuning peak learning rate")
    clip_steps: int = Field(2500, ge=1, description="toy CLIP optimiser steps")
    clip_batch: int = Field(128, ge=2, description="toy CLIP batch size (contrastive: >= 2)")
    clip_lr: float = Field(1e-3, gt=0, description="toy CLIP peak learning rate")
    threads: int = Field(2, ge=1, description="torch CPU threads")
