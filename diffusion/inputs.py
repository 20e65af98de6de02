"""From dataset samples to what a diffusion model takes, and back: image tensors and prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from editsweep.datasets.base import Sample


def images_tensor(samples: Sequence[Sample], device: torch.device) -> torch.Tensor:
    """The samples' images as one (B, 3, H, W) float tensor in [0, 1] (images already resized).

    Channels-last in memory (a permuted view), as the reference code hands its VAE the image
    (`image2latent` in the Null-text / prompt-to-prompt code: `permute(2, 0, 1)` without
    `.contiguous()`): a contiguous copy would move the encoded latents by ~3e-5 (closer to a
    float64 encode, but no longer the reference's numbers, and batch-size dependent in the CPU
    convolutions at ~1e-5).
    """
    arrays = np.stack([np.asarray(s.image.convert("RGB"), dtype=np.float32) / 255.0 for s in samples])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).to(device)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB image (the inverse of `images_tensor`)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def source_prompts(samples: Sequence[Sample]) -> list[str]:
    """Each sample's source prompt, or the empty prompt when the dataset has none (TEdBench)."""
    return [s.source_prompt or "" for s in samples]


def target_prompts(samples: Sequence[Sample]) -> list[str]:
    """Each sample's target prompt."""
    return [s.target_prompt for s in samples]


def forked(generators: Sequence[torch.Generator]) -> list[torch.Generator]:
    """Copies of the per-sample generators at their current state: each group of edit points draws
    the same numbers from its copies, whichever other points share the call."""
    return [torch.Generator(device=g.device).set_state(g.get_state()) for g in generators]
