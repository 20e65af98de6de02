"""Per-layer text conditioning (P+, Voynov et al. 2023, "P+: Extended Textual Conditioning in
Text-to-Image Generation"): each cross-attention layer of the UNet reads its own prompt embedding.

- `per_layer_conditioning`: a context that wraps the UNet's cross-attention processors (diffusers'
  own, SDPA by default) so that each reads its layer's encoder states from a `LayerStates` holder
  instead of the `encoder_hidden_states` the UNet passes; self-attention keeps its processors. With
  every layer's states equal to one embedding, the UNet computes exactly its ordinary call.
- `inserted_token`: a context in which the text encoder's token-embedding lookup returns given
  vectors at a placeholder token's positions (one vector per batch row), without touching its
  weights: textual inversion's new token, and P+'s one token per layer, differentiable.
- `cross_attention_layers` and `coarse_layers`: the layers, in the UNet's module order, and the
  ones in the lower half of its attention resolutions (the paper's "coarse" layers, which it finds shape
  the content, while the finer ones shape appearance).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel


class LayerStates:
    """The encoder states of each cross-attention layer for the UNet calls inside
    `per_layer_conditioning`: `cond` (R, L, T, D) for R rows, and optionally `uncond` (R, L, T, D)
    for the unconditional half of a classifier-free-guided call (rows [uncond; cond])."""

    def __init__(self) -> None:
        self.cond: torch.Tensor | None = None
        self.uncond: torch.Tensor | None = None

    def for_layer(self, index: int, rows: int) -> torch.Tensor:
        """The states of layer `index` for a UNet call of `rows` rows."""
        if self.cond is None:
            raise RuntimeError("per-layer conditioning has no states: set LayerStates.cond before calling the UNet")
        if rows == len(self.cond):
            return self.cond[:, index]
        if self.uncond is not None and rows == 2 * len(self.cond):
            return torch.cat([self.uncond[:, index], self.cond[:, index]])
        raise ValueError(
            f"a UNet call of {rows} rows does not fit the per-layer states of {len(self.cond)} rows "
            f"({'with' if self.uncond is not None else 'without'} unconditional states)"
        )


class PerLayerProcessor:
    """Wraps a cross-attention processor: the layer's own states replace `encoder_hidden_states`."""

    def __init__(self, inner: object, index: int, states: LayerStates) -> None:
        self.inner, self.index, self.states = inner, index, states

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        own = self.states.for_layer(self.index, len(hidden_states)).to(hidden_states.dtype)
        return self.inner(attn, hidden_states, own, attention_mask, **kwargs)


def cross_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """The processor names of the UNet's cross-attention layers, in module order (down, up, mid)."""
    return [name for name in unet.attn_processors if ".attn2." in name]


def layer_depths(unet: UNet2DConditionModel) -> list[int]:
    """How many times each cross-attention layer's input was downsampled (0: the latent's size)."""
    down, up = len(unet.config.down_block_types), len(unet.config.up_block_types)
    depths = []
    for name in cross_attention_layers(unet):
        block, _, rest = name.partition(".")
        if block == "mid_block":
            depths.append(down - 1)
        else:
            index = int(rest.split(".")[0])
            depths.append(index if block == "down_blocks" else up - 1 - index)
    return depths


def coarse_layers(unet: UNet2DConditionModel) -> list[bool]:
    """Per cross-attention layer: is it in the lower half of the UNet's attention resolutions (SD at
    512 px: 16x16 and 8x8 of 64, 32, 16, 8; the tiny UNet: its mid block)?"""
    depths = layer_depths(unet)
    distinct = sorted(set(depths))
    lowest = distinct[len(distinct) // 2 :]
    return [d in lowest for d in depths]


@contextmanager
def per_layer_conditioning(unet: UNet2DConditionModel) -> Iterator[LayerStates]:
    """Within the block, cross-attention layer i reads `states.cond[:, i]` (see `LayerStates`);
    the UNet's own processors are put back on exit."""
    original = unet.attn_processors
    states = LayerStates()
    names = cross_attention_layers(unet)
    wrapped = dict(original)
    for index, name in enumerate(names):
        wrapped[name] = PerLayerProcessor(original[name], index, states)
    unet.set_attn_processor(wrapped)
    try:
        yield states
    finally:
        unet.set_attn_processor(original)


class TokenVectors:
    """The vectors `inserted_token` puts in: `vectors` (N, D), one per row of the next encoder call."""

    def __init__(self) -> None:
        self.vectors: torch.Tensor | None = None


@contextmanager
def inserted_token(text_encoder: CLIPTextModel, token_id: int) -> Iterator[TokenVectors]:
    """Within the block, the text encoder's token embedding at the positions holding `token_id` is
    row n's vector `holder.vectors[n]` (set on the yielded holder before each call); other tokens keep
    the encoder's own embedding, whose weights are never touched. Differentiable in the vectors."""
    holder = TokenVectors()

    def replace(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if holder.vectors is None:
            return output
        at = (args[0] == token_id)[..., None]
        return torch.where(at, holder.vectors[:, None, :].to(output.dtype), output)

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield holder
    finally:
        handle.remove()
