"""`value_sharing`: RF-Solver-Edit's feature sharing (Wang et al. 2025, "Taming Rectified Flow for
Inversion and Editing", Sec. 4.3) as an editor of the flow inversions (methods/inversions/flow.py,
rf_solver.py, fireflow.py).

The inversion saves the self-attention values of its last blocks at the steps that editing's first
`inject` steps retrace (diffusion/flow.py `ValueSharing`, `value_modules`: FLUX's single-stream
blocks, as the paper's code; on SD3, which the paper does not cover, the image tokens' values of
its last two thirds of joint blocks); this editor samples under the target prompt with the
inversion's solver and substitutes them in its first `inject` steps (unset: every step the
inversion saved), keeping the source's appearance while the prompt changes the content. With the
`rf_solver` inversion on FLUX it is the `rf_solver` method, with `fireflow` the `fireflow` method
(tests/methods/test_flow_pairs.py). An inversion that saved no values (`inject: 0`, the `flow`
inversion's default), or fewer steps than asked, is refused when the spec is checked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import FlowBackbone
from editsweep.diffusion.flow_inverted import FlowInverted, flow_edit
from editsweep.methods.editors.base import Editor, register_editor


class ValueSharingParams(Params):
    """How many editing steps share the inversion's values (it changes only the edit)."""

    inject: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="first editing steps with the inversion's attention values (unset: all it saved)",
    )


@register_editor
class ValueSharingEditor(Editor):
    """Sampling of the target prompt with the inversion's attention values in its first steps."""

    name = "value_sharing"
    Params = ValueSharingParams
    families = ("sd3", "flux")

    @classmethod
    def refuses_params(cls, inversion_params: Params, params: ValueSharingParams) -> str | None:
        saved = getattr(inversion_params, "inject", 0)
        if saved == 0:
            return "the inversion saved no attention values (its inject is 0): set invert inject to the steps to share"
        if params.inject is not None and params.inject > saved:
            return (
                f"edit inject {params.inject} exceeds the {saved} editing steps whose values the inversion saved "
                "(invert inject): raise invert inject or lower edit inject"
            )
        return None

    def edit(
        self,
        backbone: FlowBackbone,
        inverted: FlowInverted,
        samples: Sequence[Sample],
        points: Sequence[ValueSharingParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        saved = len(inverted.shared)
        inject = [saved if p.inject is None else p.inject for p in points]
        return flow_edit(backbone, inverted, samples, guidance, inject)
