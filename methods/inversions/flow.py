"""`flow`: first-order (Euler) inversion of a rectified flow (SD3, FLUX) under the source prompt,
for the inversion x editor pairs (methods/pairs.py): the inversion of the `flow_inversion` method
(methods/flow_inversion.py; RF-Inversion, Rout et al. 2025, Sec. 3, and RF-Solver, Wang et al.
2024, Sec. 3.2, call it the vanilla inversion), with the same parameters and defaults, plus
`inject`: the first editing steps whose attention values it saves for the `value_sharing` editor
(0, the default: none, as `flow_inversion`).

Its editors sample back with the same Euler step (diffusion/flow_inverted.py), by default at the
family pipeline's guidance (SD3 7.0, FLUX.1-dev 3.5), as `flow_inversion` does. The module also
holds the flow inversions' common class, which `rf_solver` and `fireflow` (this folder) build on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field, model_validator

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import PIPELINE_GUIDANCE, FlowBackbone, edit_start, euler_solve
from editsweep.diffusion.flow_inverted import FlowInverted, Solve, flow_inversion_state
from editsweep.methods.inversions.base import Inversion, State, register_inversion

INJECT_DESCRIPTION = "first editing steps whose attention values are saved for the value_sharing editor"


class FlowPairInversionParams(Params):
    """The schedule, how far to invert, the guidance while inverting, and the values to save; each
    inversion sets its method's defaults."""

    steps: int = Field(28, ge=1, le=1000, description="steps of a full trajectory (both pipelines' default 28)")
    strength: float = Field(1.0, gt=0, le=1, description="fraction of the trajectory inverted then re-generated")
    inversion_guidance: float | None = Field(
        1.0, ge=0, le=50, description="guidance with the source prompt while inverting"
    )
    inject: int = Field(0, ge=0, le=1000, description=INJECT_DESCRIPTION)

    @model_validator(mode="after")
    def _inject_within_steps(self) -> FlowPairInversionParams:
        if self.inject > self.steps:
            raise ValueError(f"inject ({self.inject}) must not exceed steps ({self.steps}): lower inject")
        return self


class FlowMatchingInversion(Inversion):
    """A rectified-flow inversion by one solver; its editors sample back with the same solver."""

    families = ("sd3", "flux")
    Params = FlowPairInversionParams
    # The family's guidance while inverting when `inversion_guidance` is unset, and while editing
    # when the edit point sets none (the method's defaults).
    inversion_defaults: ClassVar[dict[str, float]] = {"sd3": 1.0, "flux": 1.0}
    edit_defaults: ClassVar[dict[str, float]] = PIPELINE_GUIDANCE

    def solver(self) -> Solve:
        """The solver of both passes."""
        return euler_solve

    def _inversion_guidance(self, family: str, params: FlowPairInversionParams) -> float:
        scale = params.inversion_guidance
        return self.inversion_defaults[family] if scale is None else scale

    def invert(
        self,
        backbone: FlowBackbone,
        samples: Sequence[Sample],
        params: FlowPairInversionParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        scale = self._inversion_guidance(backbone.family, params)
        start = edit_start(params)
        return flow_inversion_state(backbone, samples, self.solver(), params.steps, start, scale, params.inject)

    def inverted(
        self, backbone: FlowBackbone, state: State, samples: Sequence[Sample], params: FlowPairInversionParams
    ) -> FlowInverted:
        latents = state["latents"]
        start = edit_start(params)
        return FlowInverted(
            latents=latents,
            sigmas=backbone.sigmas(params.steps, latents.shape[-1]),
            start=start,
            solve=self.solver(),
            edit_guidance=self.edit_defaults[backbone.family],
            values={k: v for k, v in state.items() if k.startswith("value.")},
            shared=frozenset(range(start, start + params.inject)),
            inverted_with_negative=backbone.family == "sd3" and self._inversion_guidance("sd3", params) != 1,
        )


@register_inversion
class FlowEulerInversion(FlowMatchingInversion):
    """Euler inversion of the flow ODE (first order, 1 model call a step)."""

    name = "flow"
