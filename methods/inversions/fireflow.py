"""`fireflow`: FireFlow's inversion of a rectified flow (Deng et al. 2025, "FireFlow: Fast Inversion
of Rectified Flow for Image Semantic Editing": a midpoint step that reuses its midpoint velocity,
n + 1 model calls for n steps), for the inversion x editor pairs (methods/pairs.py): the inversion of
the `fireflow` method (methods/fireflow.py) with its parameters and defaults (8 steps; guidance
FLUX 2 for both passes, SD3 1 while inverting and 7.0 editing), saving the attention values of the
first `inject` (1) editing steps for the `value_sharing` editor, at the midpoint evaluations as the
method does.

Unlike the method, it saves them on SD3 too (diffusion/flow.py `value_modules`, not in the paper).
"""

from __future__ import annotations

from pydantic import Field

from editsweep.diffusion.flow import SOLVER_EDIT_GUIDANCE, SOLVER_INVERSION_GUIDANCE, fireflow_solve
from editsweep.diffusion.flow_inverted import Solve
from editsweep.methods.inversions.base import register_inversion
from editsweep.methods.inversions.flow import INJECT_DESCRIPTION, FlowMatchingInversion, FlowPairInversionParams


class FireFlowPairParams(FlowPairInversionParams):
    """FireFlow's schedule (paper 8 steps), strength, guidance and saved values."""

    steps: int = Field(8, ge=1, le=1000, description="solver steps of a full trajectory, 1 NFE each plus 1 (paper 8)")
    inversion_guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the source prompt while inverting (unset: FLUX 2, SD3 1)"
    )
    inject: int = Field(1, ge=0, le=1000, description=f"{INJECT_DESCRIPTION} (the paper code's examples: 1)")


@register_inversion
class FireFlowInversion(FlowMatchingInversion):
    """FireFlow's midpoint inversion of the flow ODE, its midpoint velocity reused (1 model call a step)."""

    name = "fireflow"
    Params = FireFlowPairParams
    inversion_defaults = SOLVER_INVERSION_GUIDANCE
    edit_defaults = SOLVER_EDIT_GUIDANCE

    def solver(self) -> Solve:
        return fireflow_solve
