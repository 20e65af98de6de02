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
from editsweep.methods.base import register_method, source_prompts
from editsweep.methods.ddim_p2p import DDIMP2P


@register_method
class NegativePromptInversion(DDIMP2P):
    """DDIM inversion, then P2P with the source prompt as the negative (unconditional) prompt."""

    name = "negative_prompt"

    def unconditional(self, backbone: Backbone, samples: Sequence[Sample]) -> torch.Tensor:
        """The source prompt's embedding replaces the null embedding."""
        return backbone.encode_text(source_prompts(samples))
