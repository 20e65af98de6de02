"""`fireflow` (Deng et al. 2025, "FireFlow: Fast Inversion of Rectified Flow for Image Semantic
Editing"): inversion and sampling of a rectified flow (SD3, FLUX) with a midpoint solver that reuses
its midpoint velocity.

Each step from sigma to sigma' = sigma + h (h > 0 inverting, < 0 sampling) starts from a velocity v
at x, evaluates v_mid at the half step x + h/2 v, sigma + h/2, and moves x + h v_mid (the midpoint
method, second order). v_mid, not a fresh evaluation at the new point, is the next step's v (the
paper's reuse: the midpoint velocity stands in for the velocity at the step's end, and the scheme
stays second order), so a pass of n steps costs n + 1 model calls instead of
RF-Solver's 2n (methods/rf_solver.py; both build on methods/flow_solver.py, which holds the
inversion, editing, feature sharing and guidance defaults: only `solve` and the defaults differ). Each pass (inversion, editing) starts with one fresh
evaluation. The paper's Table 4 lists 32 NFE for its 8 + 8 steps, 2 per step; with the reuse its
code makes 9 + 9 = 18 model calls, and so does ours.

Feature sharing on FLUX (RF-Solver-Edit, Wang et al. 2025, as the paper's code keeps it): the
single-stream blocks' attention values (diffusers' FluxAttnProcessor reads them from `attn.to_v`,
diffusion/flow.py `ValueSharing`) saved while inverting replace editing's for its first `inject`
steps, at the midpoint evaluations: those are the model calls inversion and editing make at the same
sigmas (editing's fresh first evaluation, at the start of the schedule, has no inversion
counterpart and is left as it is). SD3 has no single-stream blocks: `inject` must be 0 there.

Defaults are the paper code's FLUX editing examples: 8 steps, guidance 2 for both passes (FLUX.1-dev's
guidance embedding), inject 1, values shared in all single-stream blocks (its start/end layer
indices 0-37 of FLUX.1-dev's 38); on SD3 (classifier-free guidance, not in the paper) the inversion
runs at 1 and the editing at the pipeline's 7.0.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from editsweep.diffusion.flow import fireflow_solve
from editsweep.methods.base import register_method
from editsweep.methods.flow_solver import FlowSolverMethod, SolverEditParams, SolverInversionParams


class FireFlowInversionParams(SolverInversionParams):
    """The schedule, how far to invert, the guidance while inverting and the feature sharing."""

    flux_inject: ClassVar[int] = 1  # the paper code's editing examples

    steps: int = Field(8, ge=1, le=1000, description="solver steps of a full trajectory, 1 NFE each plus 1 (paper 8)")
    inject: int | None = Field(
        None, ge=0, le=1000, description="first editing steps sharing the inversion's attention values (FLUX 1, SD3 0)"
    )


class FireFlowEditParams(SolverEditParams):
    """What changes only the edit: the guidance with the target prompt (FLUX 2 as in the paper, SD3 7.0)."""


@register_method
class FireFlow(FlowSolverMethod):
    """Flow inversion with the source prompt, sampling with the target prompt, by FireFlow's midpoint solver."""

    name = "fireflow"
    InvertParams = FireFlowInversionParams
    EditParams = FireFlowEditParams

    solve = staticmethod(fireflow_solve)
