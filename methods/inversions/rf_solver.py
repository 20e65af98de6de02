"""`rf_solver`: RF-Solver's second-order inversion of a rectified flow (Wang et al. 2025, "Taming
Rectified Flow for Inversion and Editing", Eq. 8-9: two model calls a step), for the inversion x
editor pairs (methods/pairs.py): the inversion of the `rf_solver` method (methods/rf_solver.py) with
its parameters and defaults (15 steps; guidance FLUX 2 for both passes as in the paper, SD3 1 while
inverting and the pipeline's 7.0 editing), saving the attention values of the first `inject` (3)
editing steps for the `value_sharing` editor, RF-Solver-Edit's feature sharing (Sec. 4.3).

Unlike the method, it saves them on SD3 too (diffusion/flow.py `value_modules`: the image tokens'
values of its last joint blocks, not in the paper); with `plain` they are not used.
`rf_solver` + `value_sharing` on FLUX is the `rf_solver` method (tests/methods/test_flow_pairs.py).
"""

from __future__ import annotations

from pydantic import Field

from editsweep.diffusion.flow import SOLVER_EDIT_GUIDANCE, SOLVER_INVERSION_GUIDANCE, rf_solver_solve
from editsweep.diffusion.flow_inverted import Solve
from editsweep.methods.inversions.base import register_inversion
from editsweep.methods.inversions.flow import INJECT_DESCRIPTION, FlowMatchingInversion, FlowPairInversionParams


class RFSolverPairParams(FlowPairInversionParams):
    """RF-Solver's schedule (paper 15 steps, 2 NFE each), strength, guidance and saved values."""

    steps: int = Field(15, ge=1, le=1000, description="solver steps of a full trajectory, 2 NFE each (paper 15)")
    inversion_guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the source prompt while inverting (unset: FLUX 2, SD3 1)"
    )
    inject: int = Field(3, ge=0, le=1000, description=f"{INJECT_DESCRIPTION} (the paper code's examples: 3)")


@register_inversion
class RFSolverInversion(FlowMatchingInversion):
    """RF-Solver's second-order inversion of the flow ODE (2 model calls a step)."""

    name = "rf_solver"
    Params = RFSolverPairParams
    inversion_defaults = SOLVER_INVERSION_GUIDANCE
    edit_defaults = SOLVER_EDIT_GUIDANCE

    def solver(self) -> Solve:
        return rf_solver_solve
