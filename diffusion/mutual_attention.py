"""Mutual self-attention (MasaCtrl, Cao et al. 2023): from a start step and a start layer on, a
target row's self-attention queries attend to its source row's keys and values, so the edited
image keeps the source's content (texture, identity) while the target prompt lays out a new
structure, which makes non-rigid edits (pose, action) possible.

As the reference code (`masactrl/masactrl.py`, `MutualSelfAttentionControl`): layers are counted
per transformer block in forward order (down, mid, up; SD 1.x has 16, and the default
`start_layer` 10 leaves the last six, in the decoder), steps from the first denoising step, and the
replacement acts in both halves of classifier-free guidance; cross-attention is untouched, and
the source rows attend to themselves. Each target row has its own start step and layer, so a grid
of settings runs through one UNet call per step (the processor: diffusion/row_attention.py).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from editsweep.diffusion.row_attention import SourceAttnProcessor


@dataclass
class MutualControl:
    """Controls for a batch laid out as [sources (S rows); targets (T rows)] in each CFG half."""

    n_source: int
    source_index: torch.Tensor  # (T,) long: the source row of each target row
    start_step: torch.Tensor  # (T,) long: first step with mutual self-attention
    start_layer: torch.Tensor  # (T,) long: first transformer block (forward order) with it
    step: int = 0

    def active(self, block: int) -> torch.Tensor:
        """(T,) bool: the target rows whose self-attention at `block` reads their source now."""
        return (self.step >= self.start_step) & (block >= self.start_layer)


def transformer_block_order(unet: UNet2DConditionModel) -> dict[str, int]:
    """Self-attention processor name -> index of its transformer block in forward order
    (down blocks, mid block, up blocks), the layer count of MasaCtrl's reference code."""
    part = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

    def position(name: str) -> tuple[int, ...]:
        numbers = [int(n) for n in re.findall(r"\.(\d+)\.", name)]
        return (part[name.split(".")[0]], *numbers)

    names = sorted((n for n in unet.attn_processors if n.endswith("attn1.processor")), key=position)
    return {name: i for i, name in enumerate(names)}


@contextlib.contextmanager
def mutual_unet(unet: UNet2DConditionModel, control: MutualControl) -> Iterator[None]:
    """Install mutual self-attention on every transformer block's self-attention for a block of
    code; the UNet's own processors come back afterwards."""
    original = unet.attn_processors
    order = transformer_block_order(unet)
    processors = {
        name: SourceAttnProcessor(control, order[name], ("key", "value")) if name in order else AttnProcessor2_0()
        for name in original
    }
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        unet.set_attn_processor(original)
