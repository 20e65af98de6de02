"""`pnp`: Plug-and-Play (Tumanyan et al. 2023), injection of the source's decoder features and
self-attention queries and keys into the target rows (diffusion/plug_and_play.py).

Defaults are the paper's and PIE-Bench's: features at decoder layer 4 for 80% of the steps,
queries and keys at decoder layers 4 on for 50%, guidance 7.5. As there, the source rows retrace
the input: under DDIM inversion they are sampled at guidance 1 with the source prompt (the
reference's reconstruction), under Direct inversion they follow its trajectory, and an inversion
tuned for a scale (Null-text) or giving its own (edit-friendly DDPM) keeps it. One difference,
kept for every editor alike: the target rows' unconditional embedding is the inversion's (the
empty prompt under DDIM), where PIE-Bench's script uses the negative prompt "ugly, blurry, black,
low res, unrealistic". The decoder layer is an absolute index, so a UNet with fewer decoder layers
needs its own (`toy` and `tiny`: 4 layers, features at 1, attention from 1 and 2): an index past
the decoder is refused rather than silently injecting nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.plug_and_play import PnPControl, decoder_layers, pnp_unet
from editsweep.diffusion.rows import by_scale, denoise_rows
from editsweep.methods.editors.base import Editor, register_editor


class PnPParams(Params):
    """Where and how long the source's features are injected (they change only the edit)."""

    feature_threshold: float = Field(0.8, ge=0, le=1, description="fraction of steps with feature injection")
    attention_threshold: float = Field(0.5, ge=0, le=1, description="fraction of steps with query/key injection")
    feature_layer: int = Field(4, ge=0, le=1000, description="decoder layer (forward order; SD 1.x has 12) injected")
    attention_layer: int = Field(
        4, ge=0, le=1000, description="first decoder layer with query/key injection (SD 1.x: attention at 3-11)"
    )


@register_editor
class PnPEditor(Editor):
    """Plug-and-Play editing of the inverted rows."""

    name = "pnp"
    Params = PnPParams

    def edit(
        self,
        backbone: Backbone,
        inverted: Inverted,
        samples: Sequence[Sample],
        points: Sequence[PnPParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        layers = decoder_layers(backbone.unet)
        with_attention = [k for k, layer in enumerate(layers) if layer.attention is not None]
        _refuse_layers(points, len(layers), with_attention)
        batch, steps = len(samples), inverted.schedule.steps
        retrace = retracing(inverted)
        results: list[torch.Tensor | None] = [None] * len(points)
        for scale, indices in by_scale(guidance).items():
            chosen = [points[k] for k in indices]
            device = backbone.device

            def per_row(values: list[int]) -> torch.Tensor:
                return torch.tensor([v for v in values for _ in samples], device=device)

            control = PnPControl(
                n_source=batch,
                source_index=torch.arange(batch, device=device).repeat(len(chosen)),
                feature_steps=per_row([int(p.feature_threshold * steps) for p in chosen]),
                attention_steps=per_row([int(p.attention_threshold * steps) for p in chosen]),
                feature_layer=per_row([p.feature_layer for p in chosen]),
                attention_layer=per_row([p.attention_layer for p in chosen]),
            )

            def at_step(i: int, control: PnPControl = control) -> None:
                control.step = i

            with pnp_unet(backbone.unet, control):
                _, targets = denoise_rows(backbone, retrace, samples, len(chosen), scale, at_step)
            for k, image in zip(indices, backbone.decode(targets).split(batch), strict=True):
                results[k] = image
        return results


def retracing(inverted: Inverted) -> Inverted:
    """The inversion with the scale its source rows retrace the input at: its own source scale, else
    the scale it is tuned for, else guidance 1 (the reference's DDIM reconstruction)."""
    return dataclasses.replace(inverted, source_guidance=inverted.retrace_scale)


def _refuse_layers(points: Sequence[PnPParams], n_layers: int, with_attention: list[int]) -> None:
    """Refuse layers this UNet's decoder does not have (SD's defaults on a smaller UNet)."""
    features = sorted({p.feature_layer for p in points if p.feature_layer >= n_layers})
    if features:
        raise ValueError(
            f"pnp feature_layer {features} is past this UNet's {n_layers} decoder layers (forward order; SD 1.x has "
            f"12, the default 4 is up_blocks[1].resnets[1]); set feature_layer below {n_layers}"
        )
    last = max(with_attention, default=-1)
    attention = sorted({p.attention_layer for p in points if p.attention_layer > last})
    if attention:
        raise ValueError(
            f"pnp attention_layer {attention} is past this UNet's last decoder layer with attention ({last}), so "
            f"queries and keys would never be injected; decoder layers with attention: {with_attention}"
        )
