"""Mutual self-attention (MasaCtrl, Cao et al. 2023): from a start step and a start layer on, a
target row's self-attention queries attend to its source row's keys and values, so the edited
image keeps the source's content (texture, identity) while the target prompt lays out a new
structure, which makes non-rigid edits (pose, action) possible.

As the reference code (`masactrl/masactrl.py`, `MutualSelfAttentionControl`): layers are counted
per transformer block in forward order (down, mid, up; SD 1.x has 16, and the default
`start_layer` 10 leaves the last six, in the decoder), steps from the first denoising step, and the
replacement acts in both halves of classifier-free guidance; cross-attention is untouched, and
the source rows attend to themselves. Each target row has its own start step and layer, so a grid
of settings runs through one UNet call per step.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


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


class MutualAttnProcessor:
    """Self-attention whose active target rows take their source row's keys and values (SDPA);
    any other call is diffusers' own `AttnProcessor2_0`."""

    def __init__(self, control: MutualControl, block: int) -> None:
        self.control = control
        self.block = block
        self.plain = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        active = self.control.active(self.block).to(hidden_states.device)
        if encoder_hidden_states is not None or not bool(active.any()):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError("mutual self-attention expects the self-attention of a transformer block (B, N, C)")
        control = self.control
        batch, tokens, _ = hidden_states.shape
        rows = control.n_source + len(control.source_index)
        halves = batch // rows
        if halves * rows != batch:
            raise ValueError(f"attention batch {batch} is not a multiple of the {rows} controlled rows")
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        targets = control.n_source + torch.nonzero(active).flatten()
        sources = control.source_index.to(hidden_states.device)[active]
        key, value = key.clone(), value.clone()
        for h in range(halves):
            key[h * rows + targets] = key[h * rows + sources]
            value[h * rows + targets] = value[h * rows + sources]
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def mutual_unet(unet: UNet2DConditionModel, control: MutualControl) -> Iterator[None]:
    """Install mutual self-attention on every transformer block's self-attention for a block of
    code; the UNet's own processors come back afterwards."""
    original = unet.attn_processors
    order = transformer_block_order(unet)
    processors = {
        name: MutualAttnProcessor(control, order[name]) if name in order else AttnProcessor2_0()
        for name in original
    }
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        unet.set_attn_processor(original)
