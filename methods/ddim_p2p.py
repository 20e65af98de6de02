"""`ddim_p2p`: DDIM inversion, then Prompt-to-Prompt editing (PIE-Bench's "DDIM+P2P" row).

The preset of `invert_edit` with inversion `ddim` and editor `p2p` (methods/inversions/ddim.py,
methods/editors/p2p.py): under guidance the source branch drifts from the input, the baseline
that Null-text, Negative-prompt and Direct inversion improve on.
"""

from __future__ import annotations

from editsweep.diffusion.ddim import DDIMParams
from editsweep.diffusion.p2p import GuidedP2PParams
from editsweep.methods.base import register_method
from editsweep.methods.pairs import InversionEditorPair


@register_method
class DDIMP2P(InversionEditorPair):
    """DDIM inversion (guidance 1) and P2P editing with a null unconditional embedding."""

    name = "ddim_p2p"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    inversion = "ddim"
    editor = "p2p"
    InvertParams = DDIMParams
    EditParams = GuidedP2PParams
