"""Any inversion under any editor: the method that composes a registered inversion
(methods/inversions/) with a registered editor (methods/editors/).

The public harnesses (PIE-Bench's code, eta-inversion) evaluate a grid of inversions x editors.
Here the inversion is part of the invert params (so it runs once per group, shared by every editor
and edit point of the group) and the editor part of the edit params, so a list of each is a grid
axis like any parameter. `invert_edit` (methods/invert_edit.py) takes both from the spec; the
presets (`ddim_p2p`, `null_text`, `negative_prompt`, `direct_inversion`) fix the pair and keep
their historical parameters, rows and task keys.

Inversions and editors declare the backbone families they run on (SD 1.x/2.x: the DDIM-family
inversions and the UNet editors; SD3 and FLUX: the flow inversions, `value_sharing`,
`masactrl_mmdit`; `plain` both): a pair with no family in common, or with a member not of the
backbone's family, is refused when the spec is checked (`refuse`, `refuse_family`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import ConfigDict, Field, ValidationError, model_validator

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.methods.base import Method, State
from editsweep.methods.editors import EDITORS, Editor
from editsweep.methods.inversions import INVERSIONS, Inversion

DEFAULT_GUIDANCE = 7.5


def _component_params(kind: str, registry: Any, name: str, values: dict[str, Any]) -> Params:
    """`values` validated against the Params of the registered component `name`, as a ValueError
    naming the component and its parameters when they do not fit."""
    try:
        cls = registry[name]
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    try:
        return cls.Params.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or kind}: {e['msg']}" for e in err.errors())
        allowed = ", ".join(cls.Params.model_fields) or "(none)"
        raise ValueError(f"{kind} {name!r}: {problems} (its parameters: {allowed})") from None


class InversionChoice(Params):
    """`inversion` names a registered inversion; every other key is one of its parameters (its
    defaults filled in, so they are part of the task key)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    inversion: str = Field("ddim", description="a registered inversion (editsweep list inversions)")

    @model_validator(mode="after")
    def _fill(self) -> InversionChoice:
        full = _component_params("inversion", INVERSIONS, self.inversion, dict(self.model_extra or {}))
        self.model_extra.update(full.model_dump(mode="json"))
        return self

    @property
    def params(self) -> Params:
        """The chosen inversion's own parameters."""
        return INVERSIONS[self.inversion].Params.model_validate(self.model_extra)


class EditorChoice(Params):
    """`editor` names a registered editor; `guidance` is the edit's CFG scale; every other key is
    one of the editor's parameters (its defaults filled in)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    editor: str = Field("p2p", description="a registered editor (editsweep list editors)")
    guidance: float | None = Field(
        None,
        ge=0,
        le=50,
        description=(
            f"CFG scale; unset: the inversion's own (Null-text), a flow inversion's family default, or {DEFAULT_GUIDANCE}"
        ),
    )

    @model_validator(mode="after")
    def _fill(self) -> EditorChoice:
        full = _component_params("editor", EDITORS, self.editor, dict(self.model_extra or {}))
        self.model_extra.update(full.model_dump(mode="json"))
        return self

    @property
    def params(self) -> Params:
        """The chosen editor's own parameters."""
        return EDITORS[self.editor].Params.model_validate(self.model_extra)


class InversionEditorPair(Method):
    """An inversion, then an editor on its result.

    A preset fixes `inversion` and `editor` and uses their own Params (the editor's, plus
    `guidance` unless the inversion fixes it) as its InvertParams and EditParams; `invert_edit`
    leaves both None and reads them from `InversionChoice` and `EditorChoice`.
    """

    inversion: ClassVar[str | None] = None
    editor: ClassVar[str | None] = None

    @classmethod
    def _inversion(cls, params: Params) -> tuple[type[Inversion], Params]:
        if cls.inversion is None:
            return INVERSIONS[params.inversion], params.params
        return INVERSIONS[cls.inversion], params

    @classmethod
    def _edit_point(cls, point: Params) -> tuple[type[Editor], Params, float | None]:
        """(editor class, its params, the point's guidance or None) of one edit point."""
        guidance = getattr(point, "guidance", None)
        if cls.editor is None:
            return EDITORS[point.editor], point.params, guidance
        editor = EDITORS[cls.editor]
        return editor, editor.Params.model_validate(point.model_dump(exclude={"guidance"})), guidance

    @classmethod
    def refuse(cls, invert_params: Params, edit_params: Params) -> str | None:
        inversion, inv_params = cls._inversion(invert_params)
        editor, params, guidance = cls._edit_point(edit_params)
        if not set(inversion.families) & set(editor.families):
            return (
                f"editor {editor.name!r} (backbone families {', '.join(editor.families)}) cannot run on inversion "
                f"{inversion.name!r} ({', '.join(inversion.families)}): they share no backbone family; pair "
                f"{inversion.name!r} with an editor of its families (editsweep list inversions|editors)"
            )
        reason = editor.refuses(inversion) or editor.refuses_params(inv_params, params)
        if reason:
            return f"editor {editor.name!r} cannot run on inversion {inversion.name!r}: {reason}"
        fixed = getattr(inv_params, "guidance", None) if inversion.fixes_guidance else None
        if fixed is not None and guidance is not None and guidance != fixed:
            return (
                f"edit guidance {guidance} differs from {fixed}, the scale inversion {inversion.name!r} is tuned for; "
                "set the scale in the invert params (guidance) and leave it out of the edit params"
            )
        return None

    @classmethod
    def refuse_family(
        cls, family: str | None, invert_params: Params | None = None, edit_params: Params | None = None
    ) -> str | None:
        """The method's families, then those of the chosen inversion and editor where given."""
        if reason := super().refuse_family(family):
            return reason
        if family is None:
            return None
        parts = []
        if invert_params is not None:
            parts.append(("inversion", cls._inversion(invert_params)[0]))
        if edit_params is not None:
            parts.append(("editor", cls._edit_point(edit_params)[0]))
        for kind, component in parts:
            if family not in component.families:
                return (
                    f"{kind} {component.name!r} runs on backbone families {', '.join(component.families)}, "
                    f"not {family!r} (editsweep list {kind}s shows each one's families)"
                )
        return None

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        inversion, inv_params = self._inversion(params)
        return inversion().invert(backbone, samples, inv_params, generators)

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[Params],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        inversion, inv_params = self._inversion(invert_params)
        inverted = inversion().inverted(backbone, state, samples, inv_params)
        by_editor: dict[str, list[tuple[int, Params, float]]] = {}
        for k, point in enumerate(edit_params):
            editor, params, guidance = self._edit_point(point)
            scale = inverted.guidance if inverted.guidance is not None else guidance
            default = getattr(inverted, "edit_guidance", DEFAULT_GUIDANCE)  # a flow inversion's family default
            by_editor.setdefault(editor.name, []).append((k, params, default if scale is None else scale))
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for name, items in by_editor.items():
            images = EDITORS[name]().edit(
                backbone, inverted, samples, [p for _, p, _ in items], [g for _, _, g in items], generators
            )
            for (k, _, _), image in zip(items, images, strict=True):
                results[k] = image
        return results
