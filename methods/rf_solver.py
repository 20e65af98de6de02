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

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field, model_validator

from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import FlowBackbone, FlowText, ValueSharing, value_sharing
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.methods.base import Method, Params, State, register_method
from editsweep.methods.flow_inversion import PIPELINE_GUIDANCE, _negative, _start

# The paper's guidance (FLUX, both passes) and, for SD3, the pipeline's (editing) and 1 (inversion).
INVERSION_GUIDANCE = {"flux": 2.0, "sd3": 1.0}
EDIT_GUIDANCE = {"flux": 2.0, "sd3": PIPELINE_GUIDANCE["sd3"]}


class RFSolverInversionParams(Params):
    """The schedule, how far to invert and the guidance while inverting."""

    flux_inject: ClassVar[int] = 3  # the paper code's README editing examples

    steps: int = Field(15, ge=1, le=1000, description="solver steps of a full trajectory, 2 NFE each (paper 15)")
    strength: float = Field(1.0, gt=0, le=1, description="fraction of the trajectory inverted then re-generated")
    inversion_guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the source prompt while inverting (unset: FLUX 2, SD3 1)"
    )
    inject: int | None = Field(
        None, ge=0, le=1000, description="first editing steps sharing the inversion's attention values (FLUX 3, SD3 0)"
    )

    @model_validator(mode="after")
    def _inject_within_steps(self) -> RFSolverInversionParams:
        if self.inject is not None and self.inject > self.steps:
            raise ValueError(f"inject ({self.inject}) must not exceed steps ({self.steps}): lower inject")
        return self

    def resolved_inject(self, family: str) -> int:
        """`inject` with the family default; refused on SD3, which has no single-stream blocks."""
        if self.inject is None:
            return self.flux_inject if family == "flux" else 0
        if family != "flux" and self.inject > 0:
            raise ValueError(
                f"inject={self.inject}: feature sharing replaces the values of FLUX's single-stream blocks, "
                "which SD3 has none of; set inject to 0 on SD3"
            )
        return self.inject


class RFSolverEditParams(Params):
    """What changes only the edit."""

    guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the target prompt (unset: FLUX 2 as in the paper, SD3 7.0)"
    )


def rf_solver_step(
    backbone: FlowBackbone,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None,
    sharing: ValueSharing | None = None,
    step: int = 0,
) -> torch.Tensor:
    """One second-order RF-Solver step of the flow ODE from `sigma` to `sigma_next` (either way);
    `step` is the editing step it corresponds to, for `sharing`."""
    h = sigma_next - sigma
    if sharing is not None:
        sharing.at(step, 0)
    v = backbone.predict_velocity(x, sigma, text, guidance, negative)
    if sharing is not None:
        sharing.at(step, 1)
    v_mid = backbone.predict_velocity(x + h / 2 * v, sigma + h / 2, text, guidance, negative)
    derivative = (v_mid - v) / (h / 2)
    return x + h * v + h**2 / 2 * derivative


@register_method
class RFSolver(Method):
    """Second-order rectified-flow inversion with the source prompt, sampling with the target prompt."""

    name = "rf_solver"
    families = ("sd3", "flux")
    InvertParams = RFSolverInversionParams
    EditParams = RFSolverEditParams

    def solve(
        self,
        backbone: FlowBackbone,
        x: torch.Tensor,
        path: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
        text: FlowText,
        guidance: torch.Tensor,
        negative: FlowText | None,
        sharing: ValueSharing | None,
    ) -> torch.Tensor:
        """Integrates the flow ODE along `path`, (sigma, sigma', editing step) triples (FireFlow
        overrides this with its own solver, methods/fireflow.py)."""
        for sigma, sigma_next, step in path:
            x = rf_solver_step(backbone, x, sigma, sigma_next, text, guidance, negative, sharing, step)
        return x

    def invert(
        self,
        backbone: FlowBackbone,
        samples: Sequence[Sample],
        params: RFSolverInversionParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        x = backbone.encode_images(images_tensor(samples, backbone.device)).float()
        sigmas = backbone.sigmas(params.steps, x.shape[-1])
        scale = INVERSION_GUIDANCE[backbone.family] if params.inversion_guidance is None else params.inversion_guidance
        guidance = torch.full((len(samples),), scale)
        text = backbone.encode_text(source_prompts(samples))
        negative = _negative(backbone, len(samples), guidance)
        state: State = {}
        sharing = _sharing(backbone, params, state, save=True)
        with value_sharing(backbone, sharing):
            # The step from sigmas[i] up to sigmas[i - 1] is retraced by editing step i - 1.
            path = [(sigmas[i], sigmas[i - 1], i - 1) for i in range(len(sigmas) - 1, _start(params), -1)]
            x = self.solve(backbone, x, path, text, guidance, negative, sharing)
        state["latents"] = x
        return state

    def edit(
        self,
        backbone: FlowBackbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: RFSolverInversionParams,
        edit_params: Sequence[RFSolverEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch, points = len(samples), len(edit_params)
        x = state["latents"].float().repeat(points, 1, 1, 1)
        sigmas = backbone.sigmas(invert_params.steps, x.shape[-1])
        default = EDIT_GUIDANCE[backbone.family]
        guidance = torch.tensor([default if p.guidance is None else p.guidance for p in edit_params])
        guidance = guidance.repeat_interleave(batch)
        negative = _negative(backbone, batch * points, guidance)
        text = backbone.encode_text(target_prompts(samples)).repeat(points)
        sharing = _sharing(backbone, invert_params, state, save=False)
        with value_sharing(backbone, sharing):
            path = [(sigmas[i], sigmas[i + 1], i) for i in range(_start(invert_params), len(sigmas) - 1)]
            x = self.solve(backbone, x, path, text, guidance, negative, sharing)
        return list(backbone.decode(x).split(batch))


def _sharing(backbone: FlowBackbone, params: RFSolverInversionParams, state: State, save: bool) -> ValueSharing | None:
    """The feature sharing of the first `inject` editing steps, or None when there is none."""
    inject = params.resolved_inject(backbone.family)
    if inject == 0:
        return None
    first = _start(params)
    return ValueSharing(state, save, set(range(first, first + inject)))
