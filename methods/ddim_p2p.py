"""`ddim_p2p`: DDIM inversion, then Prompt-to-Prompt editing (PIE-Bench's "DDIM+P2P" row).

Under guidance the source branch drifts from the input (DDIM inversion is exact only at guidance
1): the baseline that Null-text, Negative-prompt and Direct inversion improve on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.methods.backbone import Backbone
from editsweep.methods.base import Method, Params, State, images_tensor, register_method, source_prompts
from editsweep.methods.ddim import ddim_invert, make_schedule
from editsweep.methods.p2p import GuidedP2PParams, p2p_edit


class InversionParams(Params):
    """The DDIM schedule used to invert (at guidance 1, with the source prompt) and to edit."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")


def invert_source(backbone: Backbone, samples: Sequence[Sample], steps: int) -> torch.Tensor:
    """The DDIM inversion trajectory (steps + 1, B, C, h, w) of the samples with their source prompts."""
    latents = backbone.encode_images(images_tensor(samples, backbone.device))
    cond = backbone.encode_text(source_prompts(samples))
    return ddim_invert(backbone, latents, make_schedule(backbone, steps), cond)


@register_method
class DDIMP2P(Method):
    """DDIM inversion (guidance 1) and P2P editing with a null unconditional embedding.

    Negative-prompt and Direct inversion are this method with another `unconditional` embedding
    or with `pin_source` (the source rows follow the inversion trajectory).
    """

    name = "ddim_p2p"
    InvertParams = InversionParams
    EditParams = GuidedP2PParams
    pin_source = False

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: InversionParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        trajectory = invert_source(backbone, samples, params.steps)
        return {"trajectory": trajectory} if self.pin_source else {"noise_latents": trajectory[-1]}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: InversionParams,
        edit_params: Sequence[GuidedP2PParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        schedule = make_schedule(backbone, invert_params.steps)
        trajectory = state.get("trajectory")
        start = trajectory[-1] if trajectory is not None else state["noise_latents"]
        uncond = self.unconditional(backbone, samples)
        return p2p_edit(backbone, samples, edit_params, start, schedule, uncond, source_trajectory=trajectory)

    def unconditional(self, backbone: Backbone, samples: Sequence[Sample]) -> torch.Tensor:
        """The unconditional embedding of every row: the null (empty) prompt."""
        return backbone.encode_text([""] * len(samples))
