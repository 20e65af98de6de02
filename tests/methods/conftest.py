"""Samples the tiny backbone generated itself: inputs that DDIM inversion can reconstruct."""

from __future__ import annotations

import pytest
import torch

from editsweep.datasets.base import Sample
from editsweep.methods.base import to_pil
from editsweep.methods.ddim import ddim_sample, make_schedule

PROMPTS = ["a photo of a cat", "a red car on a road", "a bowl of fruit"]


@pytest.fixture(scope="session")
def generated_samples(tiny_backbone) -> list[Sample]:
    """Three images sampled by the tiny backbone from its prompts (guidance 7.5, 10 steps)."""
    backbone = tiny_backbone
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = backbone.encode_text(PROMPTS)
    uncond = backbone.encode_text([""] * 3)
    latents = ddim_sample(backbone, noise, make_schedule(backbone, 10), cond, uncond, 7.5)
    images = backbone.decode(latents)
    return [
        Sample(id=f"gen-{i}", image=to_pil(images[i]), source_prompt=p, target_prompt=p)
        for i, p in enumerate(PROMPTS)
    ]


@pytest.fixture
def generators():
    """Makes one CPU generator per sample, as the worker does: generators(n, seed=0)."""

    def make(n: int, seed: int = 0) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed + i) for i in range(n)]

    return make
