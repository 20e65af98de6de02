"""`direct_inversion` (PnP Inversion, Ju et al. 2023) with Prompt-to-Prompt editing.

The preset of `invert_edit` with inversion `direct` and editor `p2p`
(methods/inversions/direct.py): the source rows follow the DDIM inversion trajectory exactly, the
target rows are left free and only receive the source's attention through P2P.
"""

from __future__ import annotations

from editsweep.diffusion.ddim import DDIMParams
from editsweep.diffusion.p2p import GuidedP2PParams
from editsweep.methods.base import register_method
from editsweep.methods.pairs import InversionEditorPair


@register_method
class DirectInversion(InversionEditorPair):
    """DDIM inversion, then P2P with the source branch pinned to the inversion trajectory."""

    name = "direct_inversion"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    inversion = "direct"
    editor = "p2p"
    InvertParams = DDIMParams
    EditParams = GuidedP2PParams
