"""Plug-and-Play feature injection (Tumanyan et al. 2023): during the first steps, a target row's
decoder takes its source row's spatial features (the residual branch of one decoder layer) and
self-attention queries and keys, so the target prompt restyles the input's structure.

As the reference code (PIE-Bench's `run_editing_pnp.py`, after `pnp-diffusers`): the decoder's
layers are counted in forward order, one per residual block of the UNet's up blocks with the
transformer block after it (SD 1.x: 12, layers 3-11 with attention). Features are injected at layer
`feature_layer` (4: `up_blocks[1].resnets[1]`, the output of its second convolution before the skip
connection) for the first int(feature_threshold * steps) steps, queries and keys at every layer with
attention from `attention_layer` (4) on for the first int(attention_threshold * steps) steps, in
both halves of classifier-free guidance, from the source row's unconditional half: the reference
extracts the source's features from one pass with the empty prompt, which is that half under DDIM
inversion. Each target row has its own thresholds and layers, so a grid runs in one UNet call a step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from editsweep.diffusion.row_attention import SourceAttnProcessor


@dataclass(frozen=True)
class DecoderLayer:
    """One layer of the UNet's decoder: a residual block and the self-attention after it (if any)."""

    resnet: torch.nn.Module
    attention: str | None  # the attn_processors name of its transformer block's self-attention


def decoder_layers(unet: UNet2DConditionModel) -> list[DecoderLayer]:
    """The decoder's layers in forward order (the layer count of Plug-and-Play's reference code)."""
    layers = []
    for b, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            name = None
            if attentions is not None:
                name = f"up_blocks.{b}.attentions.{j}.transformer_blocks.0.attn1.processor"
            layers.append(DecoderLayer(resnet=resnet, attention=name))
    return layers


@dataclass
class PnPControl:
    """Per target row: how many steps each injection lasts and where it acts."""

    n_source: int
    source_index: torch.Tensor  # (T,) long: the source row of each target row
    feature_steps: torch.Tensor  # (T,) long: feature injection at steps below this
    attention_steps: torch.Tensor  # (T,) long: query/key injection at steps below this
    feature_layer: torch.Tensor  # (T,) long: the decoder layer whose features are injected
    attention_layer: torch.Tensor  # (T,) long: the first decoder layer with query/key injection
    step: int = 0

    def active(self, layer: int) -> torch.Tensor:
        """(T,) bool: the target rows whose self-attention at decoder `layer` takes the source's now."""
        return (self.step < self.attention_steps) & (layer >= self.attention_layer)

    def features_active(self, layer: int) -> torch.Tensor:
        """(T,) bool: the target rows whose features at decoder `layer` are the source's now."""
        return (self.step < self.feature_steps) & (layer == self.feature_layer)


def _feature_hook(control: PnPControl, layer: int):
    """A forward hook on a residual block's second convolution: its output in the active target
    rows becomes the source row's (of the first guidance half), before the skip connection."""

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        active = control.features_active(layer).to(output.device)
        if not bool(active.any()):
            return None
        rows = control.n_source + len(control.source_index)
        halves = output.shape[0] // rows
        if halves * rows != output.shape[0]:
            raise ValueError(f"feature batch {output.shape[0]} is not a multiple of the {rows} controlled rows")
        targets = control.n_source + torch.nonzero(active).flatten()
        sources = control.source_index.to(output.device)[active]
        output = output.clone()
        for h in range(halves):
            output[h * rows + targets] = output[sources]
        return output

    return hook


@contextlib.contextmanager
def pnp_unet(unet: UNet2DConditionModel, control: PnPControl) -> Iterator[None]:
    """Install Plug-and-Play's feature and query/key injection for a block of code; the UNet's own
    processors come back and the hooks go afterwards."""
    original = unet.attn_processors
    layers = decoder_layers(unet)
    by_name = {layer.attention: k for k, layer in enumerate(layers) if layer.attention is not None}
    processors = {
        name: SourceAttnProcessor(control, by_name[name], ("query", "key"), source_half=0)
        if name in by_name
        else AttnProcessor2_0()
        for name in original
    }
    handles = [
        layers[k].resnet.conv2.register_forward_hook(_feature_hook(control, k))
        for k in sorted({int(k) for k in control.feature_layer})
    ]
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        unet.set_attn_processor(original)
