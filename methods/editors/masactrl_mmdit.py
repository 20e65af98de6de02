"""`masactrl_mmdit`: MasaCtrl's mutual self-attention (Cao et al. 2023) on SD3's and FLUX's joint
attention, as an editor of the flow inversions (methods/inversions/flow.py, rf_solver.py,
fireflow.py).

The source rows are sampled under the source prompt from the inverted latents, beside the target
rows under the target prompt, with the inversion's solver; from editing step `start_step` and
block `start_layer` (forward order: SD3's joint blocks; FLUX's double-stream then single-stream
blocks) on, the target rows' image tokens attend to their source row's image keys and values
(diffusion/flow_mutual.py). Defaults: the paper's step 4 (of its 50) and, unset, the block at the
paper's 10 of SD's 16 transformer blocks scaled to the transformer's depth (SD3-medium 15 of 24,
FLUX.1 36 of 57): the paper tunes neither for MMDiTs, so sweep both. The source rows use the edit
point's guidance, as the SD `masactrl` editor's do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import FlowBackbone, FlowText, negative_text
from editsweep.diffusion.flow_inverted import FlowInverted, edit_path
from editsweep.diffusion.flow_mutual import MutualKV, attention_blocks, mutual_kv
from editsweep.diffusion.inputs import source_prompts, target_prompts
from editsweep.diffusion.rows import by_scale
from editsweep.methods.editors.base import Editor, register_editor

# MasaCtrl's start layer on SD 1.x: block 10 of its 16 transformer blocks.
PAPER_LAYER_FRACTION = 10 / 16


class MasaCtrlMMDiTParams(Params):
    """Where mutual attention acts (it changes only the edit)."""

    start_step: int = Field(4, ge=0, le=1000, description="first editing step with mutual attention (paper 4 of 50)")
    start_layer: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="first block (forward order) with it (unset: 10/16 of the depth, as the paper's)",
    )

    def layer(self, n_blocks: int) -> int:
        """`start_layer`, or the paper's fraction of `n_blocks`."""
        return round(PAPER_LAYER_FRACTION * n_blocks) if self.start_layer is None else self.start_layer


@register_editor
class MasaCtrlMMDiTEditor(Editor):
    """Mutual attention of the target rows to their source rows' image keys and values."""

    name = "masactrl_mmdit"
    Params = MasaCtrlMMDiTParams
    families = ("sd3", "flux")

    def edit(
        self,
        backbone: FlowBackbone,
        inverted: FlowInverted,
        samples: Sequence[Sample],
        points: Sequence[MasaCtrlMMDiTParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        n_blocks = len(attention_blocks(backbone))
        too_deep = sorted({p.layer(n_blocks) for p in points if p.layer(n_blocks) >= n_blocks})
        if too_deep:
            raise ValueError(
                f"masactrl_mmdit start_layer {too_deep} is at or past the last of this transformer's {n_blocks} blocks, "
                f"so mutual attention would never act; set start_layer below {n_blocks} (or leave it unset)"
            )
        source, target = backbone.encode_text(source_prompts(samples)), backbone.encode_text(target_prompts(samples))
        results: list[torch.Tensor | None] = [None] * len(points)
        for scale, indices in by_scale(guidance).items():
            chosen = [points[k] for k in indices]
            rows = batch * (1 + len(chosen))
            control = MutualKV(
                n_source=batch,
                start_step=torch.tensor([p.start_step for p in chosen for _ in samples]),
                start_layer=torch.tensor([p.layer(n_blocks) for p in chosen for _ in samples]),
                text_tokens=target.embeds.shape[1],
            )
            text = FlowText.cat([source, target.repeat(len(chosen))])
            scales = torch.full((rows,), scale)
            x = inverted.latents.float().repeat(1 + len(chosen), 1, 1, 1)
            path = edit_path(inverted.sigmas, inverted.start)
            control.step = inverted.start
            with mutual_kv(backbone, control):
                x = inverted.solve(backbone, x, path, text, scales, negative_text(backbone, rows, scales), control)
            for k, image in zip(indices, backbone.decode(x[batch:]).split(batch), strict=True):
                results[k] = image
        return results
