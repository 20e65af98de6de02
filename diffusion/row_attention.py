"""Self-attention whose target rows take some of their source row's tensors: the mechanism shared by
MasaCtrl (keys and values, diffusion/mutual_attention.py) and Plug-and-Play (queries and keys,
diffusion/plug_and_play.py).

The batch of every UNet call is laid out as diffusion/rows.py lays it: in each classifier-free
guidance half, [sources (S rows); targets (T rows)], and target row r reads source row
`source_index[r]`. A control says, per layer, which target rows read their source now, so a grid
of settings runs through one UNet call per step. We write a processor instead of patching each
block's `forward` (as both reference codes do) so that the UNet's own processors come back intact.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

Part = Literal["query", "key", "value"]


class RowControl(Protocol):
    """Which target rows read their source row, layer by layer, at the current step."""

    n_source: int
    source_index: torch.Tensor  # (T,) long: the source row of each target row

    def active(self, layer: int) -> torch.Tensor:
        """(T,) bool: the target rows that read their source at `layer` now."""


class SourceAttnProcessor:
    """Self-attention (SDPA) whose active target rows take the `parts` of their source row.

    `source_half` None: each guidance half's targets read that half's source row (MasaCtrl);
    0: every half reads the first (unconditional) half's source row (Plug-and-Play, whose reference
    extracts the source's features from one pass with the empty prompt). Cross-attention, and any
    call where no row is active, is diffusers' own `AttnProcessor2_0`.
    """

    def __init__(
        self, control: RowControl, layer: int, parts: tuple[Part, ...], source_half: int | None = None
    ) -> None:
        self.control = control
        self.layer = layer
        self.parts = parts
        self.source_half = source_half
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
        active = self.control.active(self.layer).to(hidden_states.device)
        if encoder_hidden_states is not None or not bool(active.any()):
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError("source-row attention expects the self-attention of a transformer block (B, N, C)")
        control = self.control
        batch, tokens, _ = hidden_states.shape
        rows = control.n_source + len(control.source_index)
        halves = batch // rows
        if halves * rows != batch:
            raise ValueError(f"attention batch {batch} is not a multiple of the {rows} controlled rows")
        tensors = {
            "query": attn.to_q(hidden_states),
            "key": attn.to_k(hidden_states),
            "value": attn.to_v(hidden_states),
        }
        targets = control.n_source + torch.nonzero(active).flatten()
        sources = control.source_index.to(hidden_states.device)[active]
        for part in self.parts:
            x = tensors[part].clone()
            for h in range(halves):
                read = h if self.source_half is None else min(self.source_half, halves - 1)
                x[h * rows + targets] = x[read * rows + sources]
            tensors[part] = x
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        out = self.attend(split(tensors["query"]), split(tensors["key"]), split(tensors["value"]), active)
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(hidden_states.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The attention of every row (batch, heads, tokens, d), once the active target rows hold their
        source's parts; `active` (T,) names those rows. A subclass may restrict it (MasaCtrl's mask)."""
        return F.scaled_dot_product_attention(query, key, value)
