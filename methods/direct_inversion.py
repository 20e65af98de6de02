"""`direct_inversion` (PnP Inversion, Ju et al. 2023) with Prompt-to-Prompt editing.

DDIM inversion at guidance 1 keeps the whole trajectory. While editing under guidance, after each
step the source branch is corrected by adding back its difference to the inversion latent of that
step, so it follows the trajectory exactly and returns the input latent; the target branch is left
free and only receives the source's attention through P2P.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.methods.backbone import Backbone
from editsweep.methods.base import Method, State, register_method
from editsweep.methods.ddim import make_schedule
from editsweep.methods.ddim_p2p import InversionParams, invert_source
from editsweep.methods.p2p import GuidedP2PParams, p2p_edit


@register_method
class DirectInversion(Method):
    """DDIM inversion, then P2P with the source branch pinned to the inversion trajectory."""

    name = "direct_inversion"
    InvertParams = InversionParams
    EditParams = GuidedP2PParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: InversionParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        return {"trajectory": invert_source(backbone, samples, params.steps)}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: InversionParams,
        edit_params: Sequence[GuidedP2PParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        trajectory = state["trajectory"]
        uncond = backbone.encode_text([""] * len(samples))
        schedule = make_schedule(backbone, invert_params.steps)
        return p2p_edit(backbone, samples, edit_params, trajectory[-1], schedule, uncond, source_trajectory=trajectory)
