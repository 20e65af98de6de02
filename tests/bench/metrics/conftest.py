"""Small deterministic images and samples for the scorer tests."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from editsweep.datasets.base import Sample

PROMPTS = ["a photo of a cat", "a red car on a road", "a photo of a cat", "a bowl of fruit"]


def smooth_images(n: int, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """(n,3,H,W) images in [0,1]: upsampled low-resolution noise, so they have structure."""
    low = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)


def add_noise(images: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    """`images` plus Gaussian noise of std `sigma`, clamped to [0,1]."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise).clamp(0.0, 1.0)


def make_samples(prompts: list[str]) -> list[Sample]:
    """One sample per prompt (the image is not used by the scorers)."""
    return [Sample(id=f"s{i}", image=Image.new("RGB", (8, 8)), target_prompt=p) for i, p in enumerate(prompts)]


@pytest.fixture
def cpu() -> torch.device:
    """Scorers run on CPU in tests."""
    return torch.device("cpu")
