"""Inversions that attention editors start from, each one registered module (importing this
package registers them): compose one with an editor through `invert_edit` (methods/invert_edit.py)."""

from editsweep.methods.inversions import (  # noqa: F401  (registration)
    ddim,
    ddpm,
    direct,
    edict,
    fireflow,
    flow,
    negative_prompt,
    null_text,
    p2pzero,
    rf_solver,
)
from editsweep.methods.inversions.base import INVERSIONS, Inversion, register_inversion

__all__ = ["INVERSIONS", "Inversion", "register_inversion"]
