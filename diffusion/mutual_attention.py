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

The mask variant (`MutualSelfAttentionControlMaskAuto` there) splits each controlled self-attention
into foreground and background: foreground masks of the source and of the target come from the
cross-attention maps of chosen tokens (head-averaged, averaged over the layers of latent/4 queries
run so far in the current UNet call, min-max normalised, nearest-resized, thresholded), a target
query inside its own mask attends only to the source's foreground keys and one outside only to its
background keys. Both guidance halves use the masks of the conditional half, as there.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from editsweep.diffusion.attention import AttentionRecorder, P2PAttnProcessor
from editsweep.diffusion.row_attention import SourceAttnProcessor


@dataclass
class ForegroundMasks:
    """MaskAuto's controls per target row, and the cross-attention maps of the current UNet call.

    `source_tokens` / `target_tokens` (T, L) 0/1 mark the tokens whose maps (summed) make the
    source's and the target's foreground (the reference's `ref_token_idx`, `cur_token_idx`);
    `enabled` (T,) the rows that use masks at all.
    """

    source_tokens: torch.Tensor
    target_tokens: torch.Tensor
    threshold: torch.Tensor  # (T,)
    enabled: torch.Tensor  # (T,) bool
    recorder: AttentionRecorder

    def masks(
        self, n_source: int, source_index: torch.Tensor, tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(source foreground, target foreground), (T, tokens) bool each, at a layer of `tokens`
        queries; None before any map of this call is recorded (the reference then leaves it unmasked)."""
        if not self.recorder.maps:
            return None
        rows = n_source + len(source_index)
        maps = torch.stack([m.mean(1).float() for m in self.recorder.maps]).mean(0)[-rows:]  # conditional half
        source = (maps[source_index] * self.source_tokens[:, None]).sum(-1)
        target = (maps[n_source:] * self.target_tokens[:, None]).sum(-1)
        side, out_side = int(source.shape[1] ** 0.5), int(tokens**0.5)

        def foreground(m: torch.Tensor) -> torch.Tensor:
            low, high = m.amin(1, keepdim=True), m.amax(1, keepdim=True)
            m = (m - low) / (high - low).clamp_min(1e-12)
            m = F.interpolate(m.view(-1, 1, side, side), size=(out_side, out_side), mode="nearest").flatten(1)
            return m >= self.threshold[:, None]

        return foreground(source), foreground(target)


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_foreground: torch.Tensor,
    query_foreground: torch.Tensor,
) -> torch.Tensor:
    """Attention (R, heads, N, d) in which each query of row r attends only to the foreground keys
    of `key_foreground[r]` (N,) when `query_foreground[r]` marks it, else only to the background keys.

    An empty key set falls back to every key (the reference's additive -finfo.max mask makes such a
    softmax uniform instead, a float saturation; min-max normalisation keeps the foreground non-empty
    at any threshold up to 1, so only an all-foreground source at threshold 0, or a constant map, which
    the reference turns into NaN and we into zeros, reaches it).
    """
    foreground = key_foreground | ~key_foreground.any(1, keepdim=True)
    background = ~key_foreground | key_foreground.all(1, keepdim=True)
    inside = F.scaled_dot_product_attention(query, key, value, attn_mask=foreground[:, None, None, :])
    outside = F.scaled_dot_product_attention(query, key, value, attn_mask=background[:, None, None, :])
    return torch.where(query_foreground[:, None, :, None], inside, outside)


@dataclass
class MutualControl:
    """Controls for a batch laid out as [sources (S rows); targets (T rows)] in each CFG half."""

    n_source: int
    source_index: torch.Tensor  # (T,) long: the source row of each target row
    start_step: torch.Tensor  # (T,) long: first step with mutual self-attention
    start_layer: torch.Tensor  # (T,) long: first transformer block (forward order) with it
    mask: ForegroundMasks | None = None
    step: int = 0

    def active(self, block: int) -> torch.Tensor:
        """(T,) bool: the target rows whose self-attention at `block` reads their source now."""
        return (self.step >= self.start_step) & (block >= self.start_layer)

    def begin_step(self, step: int) -> None:
        """Before step `step`'s UNet call: set the step, forget the last call's cross-attention maps."""
        self.step = step
        if self.mask is not None:
            self.mask.recorder.take()


class MutualAttnProcessor(SourceAttnProcessor):
    """Mutual self-attention (keys and values from the source row), foreground/background-restricted
    for the target rows whose control has a mask."""

    control: MutualControl

    def __init__(self, control: MutualControl, layer: int) -> None:
        super().__init__(control, layer, ("key", "value"))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        out = super().attend(query, key, value, active)
        control, mask = self.control, self.control.mask
        if mask is None or not bool((active & mask.enabled.to(active.device)).any()):
            return out
        found = mask.masks(control.n_source, control.source_index.to(query.device), query.shape[2])
        if found is None:
            return out
        picked = torch.nonzero(active & mask.enabled.to(active.device)).flatten()
        rows = control.n_source + len(control.source_index)
        for half in range(query.shape[0] // rows):
            index = half * rows + control.n_source + picked
            masked = masked_attention(query[index], key[index], value[index], found[0][picked], found[1][picked])
            out[index] = masked.to(out.dtype)
        return out


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
    code (and, with a mask, recording of the cross-attention maps); the UNet's own processors come
    back afterwards."""
    original = unet.attn_processors
    order = transformer_block_order(unet)

    def processor(name: str) -> object:
        if name in order:
            return MutualAttnProcessor(control, order[name])
        if control.mask is not None and name.endswith("attn2.processor"):
            return P2PAttnProcessor(control.mask.recorder)
        return AttnProcessor2_0()

    processors = {name: processor(name) for name in original}
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        unet.set_attn_processor(original)
