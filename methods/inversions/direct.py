"""`direct` inversion (PnP Inversion, Ju et al. 2023): DDIM inversion at guidance 1 keeping the
whole trajectory.

While editing under guidance, after each step the source rows are corrected by adding back their
difference to the inversion latent of that step, so they follow the trajectory exactly and return
the input latent; the target rows are left free and only receive the source's attention (or
features) through the editor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import DDIMParams, invert_source, make_schedule
from editsweep.diffusion.inverted import Inverted
from editsweep.methods.inversions.base import Inversion, State, register_inversion


@register_inversion
class DirectInversion(Inversion):
    """DDIM inversion whose trajectory pins the editor's source rows."""

    name = "direct"
    families = ("sd", "sdxl")  # only the UNet's cross-attention and noise prediction (diffusion/sdxl.py)
    Params = DDIMParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: DDIMParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        return {"trajectory": invert_source(backbone, samples, params.steps)}

    def inverted(self, backbone: Backbone, state: State, samples: Sequence[Sample], params: DDIMParams) -> Inverted:
        trajectory = state["trajectory"]
        return Inverted(
            schedule=make_schedule(backbone, params.steps),
            start=trajectory[-1],
            uncond=backbone.encode_text([""] * len(samples)),
            trajectory=trajectory,
        )
