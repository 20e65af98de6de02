"""`direct_inversion` (PnP Inversion, Ju et al. 2023) with Prompt-to-Prompt editing.

DDIM inversion at guidance 1 keeps the whole trajectory. While editing under guidance, after each
step the source branch is corrected by adding back its difference to the inversion latent of that
step, so it follows the trajectory exactly and returns the input latent; the target branch is left
free and only receives the source's attention through P2P.
"""

from __future__ import annotations

from editsweep.methods.base import register_method
from editsweep.methods.ddim_p2p import DDIMP2P


@register_method
class DirectInversion(DDIMP2P):
    """DDIM inversion, then P2P with the source branch pinned to the inversion trajectory."""

    name = "direct_inversion"
    pin_source = True
