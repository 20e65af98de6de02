"""Attention editors that run on any inversion, each one registered module (importing this
package registers them): compose one with an inversion through `invert_edit` (methods/invert_edit.py)."""

from editsweep.methods.editors import (  # noqa: F401  (registration)
    masactrl,
    masactrl_mmdit,
    p2p,
    pix2pix_zero,
    plain,
    pnp,
    value_sharing,
)
from editsweep.methods.editors.base import EDITORS, Editor, register_editor

__all__ = ["EDITORS", "Editor", "register_editor"]
