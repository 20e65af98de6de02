"""`ddim`: DDIM inversion at guidance 1 with the source prompt (Song et al. 2021; the "DDIM" row
of PIE-Bench).

Under guidance the source branch drifts from the input (DDIM inversion is exact only at guidance
1): the baseline that Null-text, Negative-prompt and Direct inversion improve on.
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
class DDIMInversion(Inversion):
    """DDIM inversion; editing starts from its noisiest latent with the null unconditional embedding."""

    name = "ddim"
    families = ("sd", "sdxl")  # only the UNet's cross-attention and noise prediction (diffusion/sdxl.py)
    Params = DDIMParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: DDIMParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        return {"noise_latents": invert_source(backbone, samples, params.steps)[-1]}

    def inverted(self, backbone: Backbone, state: State, samples: Sequence[Sample], params: DDIMParams) -> Inverted:
        return Inverted(
            schedule=make_schedule(backbone, params.steps),
            start=state["noise_latents"],
            uncond=backbone.encode_text([""] * len(samples)),
        )
