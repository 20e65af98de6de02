"""Attention editors that run on any inversion, each one registered module (importing this
package registers them): compose one with an inversion through `invert_edit` (methods/invert_edit.py)."""

from editsweep.methods.editors import masactrl, p2p, pix2pix_zero, plain, pnp, value_sharing  # noqa: F401  (registration)
from editsweep.methods.editors.base import EDITORS, Editor, register_editor

__all__ = ["EDITORS", "Editor", "register_editor"]
