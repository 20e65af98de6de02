"""`edict`: EDICT (Wallace, Gokul, Naik 2023), the paper's own editing.

The preset of `invert_edit` with inversion `edict` and editor `plain` (methods/inversions/edict.py,
methods/editors/plain.py): coupled inversion under the source prompt to `strength` (0.8) of 50
steps, then coupled sampling under the target prompt, with no attention control, at guidance 3 for
both, as the reference code's `EDICT_editing` (`salesforce/EDICT`). Its images are the x sequence
of the pair (the reference returns both, nearly identical).
"""

from __future__ import annotations

from pydantic import Field

from editsweep.core.params import Params
from editsweep.diffusion.edict import EDICTParams
from editsweep.methods.base import register_method
from editsweep.methods.pairs import InversionEditorPair


class EDICTEditParams(Params):
    """What only changes the edit."""

    guidance: float = Field(3.0, ge=0, le=50, description="CFG scale of the target prompt (the paper's 3)")


@register_method
class EDICT(InversionEditorPair):
    """EDICT inversion, then coupled sampling under the target prompt."""

    name = "edict"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    inversion = "edict"
    editor = "plain"
    InvertParams = EDICTParams
    EditParams = EDICTEditParams
