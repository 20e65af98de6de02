"""`negative_prompt` inversion (Miyake et al. 2023): DDIM inversion at guidance 1, then editing
with the source prompt's embedding as the unconditional input of every row.

The source branch then needs no optimisation to follow the inversion closely: with uncond = cond
its guided noise equals the conditional noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import DDIMParams, invert_source, make_schedule
from editsweep.diffusion.inputs import source_prompts
from editsweep.diffusion.inverted import Inverted
from editsweep.methods.inversions.base import Inversion, State, register_inversion


@register_inversion
class NegativePromptInversion(Inversion):
    """DDIM inversion; the source prompt replaces the null embedding as the negative prompt."""

    name = "negative_prompt"
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
            uncond=backbone.encode_text(source_prompts(samples)),
        )
