"""From dataset samples to what a diffusion model takes, and back: image tensors and prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from editsweep.datasets.base import Sample


def images_tensor(samples: Sequence[Sample], device: torch.device) -> torch.Tensor:
    """The samples' images as one (B, 3, H, W) float tensor in [0, 1] (images already resized)."""
    arrays = np.stack([np.asarray(s.image.convert("RGB"), dtype=np.float32) / 255.0 for s in samples])
    # contiguous: a permuted (channels-last) view moves the encoded latents by ~3e-5 and 9x further
    # from a float64 encode than the plain layout does
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous().to(device)


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
