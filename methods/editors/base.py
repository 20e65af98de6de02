"""The `Editor` API: the second half of an (inversion, editor) pair, and its registry.

An editor is one registered file in this folder: its `Params` (one edit point's controls) and a
batch-first `edit` that denoises every sample at every point from an inversion's result
(diffusion/inverted.py), whichever inversion made it. Pairs are composed by methods/pairs.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from editsweep.core.params import Params
from editsweep.core.registry import Registry
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inverted import Inverted

if TYPE_CHECKING:
    from editsweep.methods.inversions.base import Inversion


class Editor(ABC):
    """An attention (or feature) editor that turns an inversion into edited images."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    # Backbone families it runs on, like `Inversion.families`: a pair needs one in common with its
    # inversion and the backbone's (methods/pairs.py).
    families: ClassVar[tuple[str, ...]] = ("sd",)

    @classmethod
    def refuses(cls, inversion: type[Inversion]) -> str | None:
        """Why this editor cannot run on `inversion`'s result, or None when it can (checked when the
        spec is validated, before any work starts)."""
        return None

    @classmethod
    def refuses_params(cls, inversion_params: Params, params: Params) -> str | None:
        """Why this edit point cannot run on an inversion made with `inversion_params`, or None
        (checked with `refuses` when the spec is validated)."""
        return None

    @abstractmethod
    def edit(
        self,
        backbone: Backbone,
        inverted: Inverted,
        samples: Sequence[Sample],
        points: Sequence[Params],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        """One (B, 3, H, W) image tensor in [0, 1] per point, at each point's guidance scale
        (`Method.edit`'s output contract, methods/base.py)."""


EDITORS: Registry[type[Editor]] = Registry("editor")
register_editor = EDITORS.register
