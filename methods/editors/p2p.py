"""`p2p`: Prompt-to-Prompt (Hertz et al. 2023), cross- and self-attention injection from the
source rows into the target rows, word swap or refinement by the prompts' alignment, reweighting
and LocalBlend (diffusion/p2p.py, after the paper's reference code `prompt-to-prompt`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.p2p import GuidedP2PParams, P2PParams, p2p_edit
from editsweep.methods.editors.base import Editor, register_editor


@register_editor
class P2PEditor(Editor):
    """Prompt-to-Prompt editing of the inverted rows."""

    name = "p2p"
    families = ("sd", "sdxl")  # only the UNet's cross-attention and noise prediction (diffusion/sdxl.py)
    Params = P2PParams

    def edit(
        self,
        backbone: Backbone,
        inverted: Inverted,
        samples: Sequence[Sample],
        points: Sequence[P2PParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        guided = [GuidedP2PParams(**p.model_dump(), guidance=g) for p, g in zip(points, guidance, strict=True)]
        return p2p_edit(
            backbone,
            samples,
            guided,
            inverted.start,
            inverted.schedule,
            inverted.uncond,
            source_trajectory=inverted.trajectory,
            advance=inverted.advance,
            source_scale=inverted.source_guidance,
            sampler=inverted.sampler,
        )
