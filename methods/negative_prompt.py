"""`negative_prompt` inversion (Miyake et al. 2023) with Prompt-to-Prompt editing.

DDIM inversion at guidance 1, then editing where the source prompt's embedding replaces the null
embedding as the unconditional input. The source branch then needs no optimisation to follow the
inversion closely: with uncond = cond its guided noise equals the conditional noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.methods.backbone import Backbone
from editsweep.methods.base import Method, State, register_method, source_prompts
from editsweep.methods.ddim import make_schedule
from editsweep.methods.ddim_p2p import InversionParams, invert_source
from editsweep.methods.p2p import GuidedP2PParams, p2p_edit


@register_method
class NegativePromptInversion(Method):
    """DDIM inversion, then P2P with the source prompt as the negative (unconditional) prompt."""

    name = "negative_prompt"
    InvertParams = InversionParams
    EditParams = GuidedP2PParams

    def invert(
        self, backbone: Backbone, samples: Sequence[Sample], params: InversionParams, generators: Sequence[torch.Generator]
    ) -> State:
        return {"noise_latents": invert_source(backbone, samples, params.steps)[-1]}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: InversionParams,
        edit_params: Sequence[GuidedP2PParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        uncond = backbone.encode_text(source_prompts(samples))
        schedule = make_schedule(backbone, invert_params.steps)
        return p2p_edit(backbone, samples, edit_params, state["noise_latents"], schedule, uncond)
