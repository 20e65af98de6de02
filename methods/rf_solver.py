"""`rf_solver` (Wang et al. 2025, "Taming Rectified Flow for Inversion and Editing", RF-Solver):
inversion and sampling of a rectified flow (SD3, FLUX) with a second-order solver.

Each step from sigma to sigma' = sigma + h (h > 0 inverting, < 0 sampling) takes the velocity v at
x, the velocity v_mid at the half step x + h/2 v, sigma + h/2, estimates the velocity's time
derivative as (v_mid - v) / (h/2), and moves x + h v + h^2/2 * derivative (paper Eq. 8-9, the
second-order Taylor expansion of the flow ODE): two model calls per step, so 15 steps of
inversion and 15 of editing are the paper's 60 NFE on FLUX (FireFlow, Deng et al. 2025, Table 4).
The inversion runs under the source prompt, the editing under the target prompt, on the family
pipeline's own schedule (diffusion/flow.py `FlowBackbone.sigmas`).

RF-Solver-Edit's feature sharing (paper Sec. 4.3) on FLUX: while inverting, the self-attention
values of every single-stream block are saved at the steps that editing's first `inject` steps
retrace, and substituted while editing at those steps (both solver calls of each step), as the
paper's code does: the whole value tensor, text and image tokens (its code counts blocks from one
`id` and shares from id 20 on; we share in all of FLUX's single-stream blocks). The hooks sit on the blocks'
`attn.to_v` projections (diffusers' FluxAttnProcessor reads the values from it), so diffusers'
attention processors stay as they are. SD3's MMDiT has no single-stream blocks: there `inject` must
be 0 (the solver alone, "RF-Solver" in the paper's ablation).

Defaults are the paper's FLUX editing setting: 15 steps, guidance 2 for both passes (FLUX.1-dev's
guidance embedding), inject 3 (the value of the paper code's README editing examples); on SD3
(classifier-free guidance, not in the paper) the inversion runs at 1 and the editing at the
pipeline's 7.0.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from editsweep.diffusion.flow import rf_solver_solve
from editsweep.methods.base import register_method
from editsweep.methods.flow_solver import FlowSolverMethod, SolverEditParams, SolverInversionParams


class RFSolverInversionParams(SolverInversionParams):
    """The schedule, how far to invert, the guidance while inverting and the feature sharing."""

    flux_inject: ClassVar[int] = 3  # the paper code's README editing examples

    steps: int = Field(15, ge=1, le=1000, description="solver steps of a full trajectory, 2 NFE each (paper 15)")
    inject: int | None = Field(
        None, ge=0, le=1000, description="first editing steps sharing the inversion's attention values (FLUX 3, SD3 0)"
    )


class RFSolverEditParams(SolverEditParams):
    """What changes only the edit: the guidance with the target prompt (FLUX 2 as in the paper, SD3 7.0)."""


@register_method
class RFSolver(FlowSolverMethod):
    """Second-order rectified-flow inversion with the source prompt, sampling with the target prompt."""

    name = "rf_solver"
    InvertParams = RFSolverInversionParams
    EditParams = RFSolverEditParams

    solve = staticmethod(rf_solver_solve)
