"""`invert_edit`: any registered inversion under any registered editor (methods/pairs.py).

    - name: invert_edit
      invert: {inversion: [ddim, null_text, direct], steps: 50}
      edit: {editor: [p2p], cross_replace: [0.4, 0.8]}

One inversion per (inversion, its params, sample, seed), shared by every editor and edit point.
Keys other than `inversion` (`editor`, `guidance`) must be parameters of every inversion (editor)
listed with them; give separate entries for parameters of one of them only (entries with the same
invert params share their inversions). Pairs that cannot run are refused when the spec is checked.
"""

from __future__ import annotations

from editsweep.methods.base import register_method
from editsweep.methods.pairs import EditorChoice, InversionChoice, InversionEditorPair


@register_method
class InvertEdit(InversionEditorPair):
    """Any inversion (`invert.inversion`) under any editor (`edit.editor`)."""

    name = "invert_edit"
    families = ("sd", "sd3", "flux")  # each pair: those its inversion and editor share (refuse_family)
    InvertParams = InversionChoice
    EditParams = EditorChoice
