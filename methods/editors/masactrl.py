"""`masactrl`: MasaCtrl, mutual self-attention control (Cao et al. 2023).

From `start_step` and `start_layer` on, the target rows' self-attention reads the keys and values
of their source row (diffusion/mutual_attention.py), keeping the input's content under a target
prompt that may change pose or layout. Defaults are the paper's and PIE-Bench's (step 4, layer
10 of SD's 16 transformer blocks, of 50 steps), after the reference code `TencentARC/MasaCtrl`
(`MutualSelfAttentionControl`). The layer is an absolute block index as there, so a UNet with
fewer blocks needs its own (`toy`: 7 blocks, its decoder from 3; `tiny`: 4, from 2): a start_layer
past the last block is refused rather than silently editing nothing. The mask variant from
cross-attention is not built yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.mutual_attention import MutualControl, mutual_unet, transformer_block_order
from editsweep.diffusion.rows import by_scale, denoise_rows
from editsweep.methods.editors.base import Editor, register_editor


class MasaCtrlParams(Params):
    """Where mutual self-attention acts (it changes only the edit)."""

    start_step: int = Field(4, ge=0, le=1000, description="first denoising step with mutual self-attention")
    start_layer: int = Field(
        10, ge=0, le=1000, description="first transformer block (forward order; SD 1.x has 16) with it"
    )


@register_editor
class MasaCtrlEditor(Editor):
    """Mutual self-attention editing of the inverted rows."""

    name = "masactrl"
    Params = MasaCtrlParams

    def edit(
        self,
        backbone: Backbone,
        inverted: Inverted,
        samples: Sequence[Sample],
        points: Sequence[MasaCtrlParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        n_blocks = len(transformer_block_order(backbone.unet))
        too_deep = sorted({p.start_layer for p in points if p.start_layer >= n_blocks})
        if too_deep:
            raise ValueError(
                f"masactrl start_layer {too_deep} is at or past the last of this UNet's {n_blocks} transformer "
                f"blocks (forward order), so mutual self-attention would never act; SD 1.x has 16 (the default 10 "
                f"leaves its last 6); set start_layer below {n_blocks}"
            )
        results: list[torch.Tensor | None] = [None] * len(points)
        for scale, indices in by_scale(guidance).items():
            chosen = [points[k] for k in indices]
            device = backbone.device
            control = MutualControl(
                n_source=batch,
                source_index=torch.arange(batch, device=device).repeat(len(chosen)),
                start_step=torch.tensor([p.start_step for p in chosen for _ in samples], device=device),
                start_layer=torch.tensor([p.start_layer for p in chosen for _ in samples], device=device),
            )

            def at_step(i: int, control: MutualControl = control) -> None:
                control.step = i

            with mutual_unet(backbone.unet, control):
                _, targets = denoise_rows(backbone, inverted, samples, len(chosen), scale, at_step)
            for k, image in zip(indices, backbone.decode(targets).split(batch), strict=True):
                results[k] = image
        return results
