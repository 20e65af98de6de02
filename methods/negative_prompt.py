"""`negative_prompt` inversion (Miyake et al. 2023) with Prompt-to-Prompt editing.

The preset of `invert_edit` with inversion `negative_prompt` and editor `p2p`
(methods/inversions/negative_prompt.py): DDIM inversion at guidance 1, then editing where the
source prompt's embedding replaces the null embedding as the unconditional input.
"""

from __future__ import annotations

from editsweep.diffusion.ddim import DDIMParams
from editsweep.diffusion.p2p import GuidedP2PParams
from editsweep.methods.base import register_method
from editsweep.methods.pairs import InversionEditorPair


@register_method
class NegativePromptInversion(InversionEditorPair):
    """DDIM inversion, then P2P with the source prompt as the negative (unconditional) prompt."""

    name = "negative_prompt"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    inversion = "negative_prompt"
    editor = "p2p"
    InvertParams = DDIMParams
    EditParams = GuidedP2PParams
