"""`plain`: no attention control. The target rows alone are denoised under the target prompt from
the inversion's start, with its sampler (diffusion/rows.py): the editing of `ddim_edit`, and of
EDICT's paper (the reference's `EDICT_editing` without `use_p2p`), for any inversion.

On the flow families (SD3, FLUX) it samples the flow inversion's latents under the target prompt
with the inversion's own solver (diffusion/flow_inverted.py): with the `flow` inversion that is the
`flow_inversion` method, with `rf_solver` / `fireflow` those methods without feature sharing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.flow_inverted import FlowInverted, flow_edit
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.rows import by_scale, denoise_rows
from editsweep.methods.editors.base import Editor, register_editor


class PlainParams(Params):
    """No controls: only the edit's guidance scale changes the result."""


@register_editor
class PlainEditor(Editor):
    """Sampling of the target prompt from the inversion, one loop per guidance scale."""

    name = "plain"
    Params = PlainParams
    families = ("sd", "sdxl", "sd3", "flux")

    def edit(
        self,
        backbone: Backbone,
        inverted: Inverted | FlowInverted,
        samples: Sequence[Sample],
        points: Sequence[PlainParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        if isinstance(inverted, FlowInverted):
            return flow_edit(backbone, inverted, samples, guidance, [0] * len(points))
        results: list[torch.Tensor | None] = [None] * len(points)
        for scale, indices in by_scale(guidance).items():
            _, targets = denoise_rows(backbone, inverted, samples, 1, scale, sources=False)
            images = backbone.decode(targets)
            for k in indices:
                results[k] = images
        return results
