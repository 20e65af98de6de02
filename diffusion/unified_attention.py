"""Unified attention control (UAC, InfEdit: Xu et al. 2024), after the reference code
`sled-group/InfEdit` (`AttentionControlEdit.self_attn_forward` / `forward` and `LocalBlend` of
`app_infedit.py`, the attention processor of `ptp_utils.py`).

Each UNet call holds, in each classifier-free guidance half, the rows [sources (S); targets (T);
mutuals (T)]: target row r edits source row `source_index[r]` under the target prompt, and mutual
row r (the source prompt) is its "mutual" branch, the layout-following copy of the source.

- self-attention, every layer and both halves: while a row's step is inside its self-control window
  the target takes the source's queries and keys (its maps, P2P's self-attention replacement) with its
  own values, and the mutual row is the source row exactly; afterwards the target attends freely and
  the mutual row attends with the target's queries to the source's keys and values (MasaCtrl's mutual
  self-attention). We gather rows per part instead of reusing diffusion/row_attention.py because the
  mutual row reads its queries from a target row, not from a source row.
- cross-attention, conditional half: inside the cross-control window the target's maps are the
  source's, rearranged by the prompts' alignment (P2P's `P2PControl`, diffusion/attention.py); the
  mutual rows are untouched.
- local blend: the maps of the mutual rows and of the source rows, each rearranged to the target's
  tokens (the target's own maps for the tokens without a source counterpart), accumulated over
  layers of latent / 4 queries and over steps (`LocalBlend.collect`, rows [sources; mutuals] per
  target row), give the masks of the blend words: the target blend words on the mutual maps, the
  source ("mutual") blend words on the source maps (the reference's `attn_base_store` and
  `attn_replace_new`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from editsweep.diffusion.attention import LocalBlend, P2PAttnProcessor, P2PControl


@dataclass
class UnifiedControl:
    """Per target row: its source row, how many steps its self-attention control lasts; the cross
    control of [targets; mutuals] (mutual rows never active) and the blend's map accumulator."""

    n_source: int
    source_index: torch.Tensor  # (T,) long
    self_steps: torch.Tensor  # (T,) long: steps (from 0) with self-attention control, then mutual
    cross: P2PControl  # n_source = S, 2T controlled rows: targets, then mutuals
    blend: LocalBlend | None = None  # accumulates [sources; mutuals] maps (2T rows) in target-token space
    step: int = 0

    @property
    def rows(self) -> int:
        """Rows of one guidance half."""
        return self.n_source + 2 * len(self.source_index)

    def gather(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query, key, value) row indices of one guidance half: the row each row reads each part from."""
        n, t = self.n_source, len(self.source_index)
        source = self.source_index.to(device)
        target = n + torch.arange(t, device=device)
        early = self.step < self.self_steps.to(device)
        query, key, value = (torch.arange(self.rows, device=device) for _ in range(3))
        query[target] = torch.where(early, source, target)
        key[target] = torch.where(early, source, target)
        query[target + t] = torch.where(early, source, target)
        key[target + t] = source
        value[target + t] = source
        return query, key, value

    def __call__(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """The cross-attention hook: collect the blend's maps, then P2P's cross-attention control."""
        tokens = self.blend.map_tokens if self.blend is not None else None
        if is_cross and self.blend is not None and (tokens is None or probs.shape[2] == tokens):
            cond = probs.split(self.rows)[-1]
            n, t = self.n_source, len(self.source_index)
            targets, mutuals = cond[n : n + t], cond[n + t :]
            sources = cond[self.source_index.to(probs.device)]
            mapper, alphas = self.cross.mapper[:t].to(probs.dtype), self.cross.alphas[:t].to(probs.dtype)[:, None, None]
            mapper, alphas, targets = mapper.repeat(2, 1, 1), alphas.repeat(2, 1, 1, 1), targets.repeat(2, 1, 1, 1)
            mapped = torch.einsum("rhqi,rij->rhqj", torch.cat([sources, mutuals]), mapper)
            self.blend.collect(mapped * alphas + targets * (1 - alphas))
        return self.cross(probs, is_cross)

    def blend_mask(
        self, words: torch.Tensor, threshold: torch.Tensor, latent_hw: tuple[int, int], source: bool = False
    ) -> torch.Tensor:
        """(T, 1, h, w) bool: the mask of the blend words `words` (T, L) 0/1 on the mutual rows' maps
        (or, with `source`, the source rows'), False for rows without words.

        As the reference's `LocalBlend.get_mask`: the maps (mean over layers, heads and steps so far)
        of the words' tokens, their maximum over tokens, nearest-resized to the latent, divided by
        their maximum, above `threshold` (T,).
        """
        t = len(words)
        maps = (self.blend.total / self.blend.count).split(t)[0 if source else 1]  # (T, Q, L)
        side = int(maps.shape[1] ** 0.5)
        m = (maps * words[:, None]).amax(-1).view(-1, 1, side, side)
        m = F.interpolate(m, size=latent_hw, mode="nearest")
        m = m / m.flatten(1).amax(1).view(-1, 1, 1, 1)
        return (m > threshold.view(-1, 1, 1, 1)) & words.bool().any(1).view(-1, 1, 1, 1)


class UnifiedAttnProcessor:
    """Self-attention with UAC's row gathering (SDPA); cross-attention through P2P's processor with
    the control as its hook (maps materialised)."""

    def __init__(self, control: UnifiedControl) -> None:
        self.control = control
        self.cross = P2PAttnProcessor(control)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self.cross(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError("unified attention control expects the self-attention of a transformer block (B, N, C)")
        batch, tokens, _ = hidden_states.shape
        rows = self.control.rows
        halves = batch // rows
        if halves * rows != batch:
            raise ValueError(f"attention batch {batch} is not a multiple of the {rows} controlled rows")
        heads = attn.heads
        parts = []
        for linear, index in zip((attn.to_q, attn.to_k, attn.to_v), self.control.gather(hidden_states.device)):
            x = linear(hidden_states).view(halves, rows, tokens, -1)[:, index].reshape(batch, tokens, -1)
            parts.append(x.view(batch, tokens, heads, -1).transpose(1, 2))
        out = F.scaled_dot_product_attention(*parts)
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(hidden_states.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def unified_unet(unet: UNet2DConditionModel, control: UnifiedControl) -> Iterator[None]:
    """Install UAC on every attention layer of the UNet for a block of code; the UNet's own
    processors come back afterwards."""
    original = unet.attn_processors
    unet.set_attn_processor(UnifiedAttnProcessor(control))
    try:
        yield
    finally:
        unet.set_attn_processor(original)
