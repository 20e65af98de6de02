"""`null_text` inversion (Mokady et al. 2023) with Prompt-to-Prompt editing.

The preset of `invert_edit` with inversion `null_text` and editor `p2p`
(methods/inversions/null_text.py, diffusion/null_text.py): the edit runs at the guidance scale
the null embeddings were tuned for, `invert.guidance`.
"""

from __future__ import annotations

from editsweep.diffusion.null_text import NullTextParams
from editsweep.diffusion.p2p import P2PParams
from editsweep.methods.base import register_method
from editsweep.methods.pairs import InversionEditorPair


@register_method
class NullTextInversion(InversionEditorPair):
    """Null-text inversion, then P2P editing with the tuned per-step null embeddings."""

    name = "null_text"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    inversion = "null_text"
    editor = "p2p"
    InvertParams = NullTextParams
    EditParams = P2PParams
