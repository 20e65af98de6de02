"""The second-order flow solvers' methods (RF-Solver-Edit, `methods/rf_solver.py`; FireFlow,
`methods/fireflow.py`): inversion under the source prompt and editing under the target prompt on the
family pipeline's schedule, with FLUX's attention-value sharing for the first `inject` editing steps
(diffusion/flow.py `ValueSharing`); each method supplies its solver (`solve`) and its paper's
defaults. Not a registered method: the two registered files build on it, as the inversion x editor
presets build on methods/pairs.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field, model_validator

from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import (
    SOLVER_EDIT_GUIDANCE,
    SOLVER_INVERSION_GUIDANCE,
    FlowBackbone,
    ValueSharing,
    edit_start,
    negative_text,
    value_sharing,
)
from editsweep.diffusion.flow_inverted import Solve
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.methods.base import Method, Params, State



class SolverInversionParams(Params):
    """The schedule, how far to invert, the guidance while inverting and the feature sharing; each
    method sets its paper's `steps` and FLUX `inject` defaults."""

    flux_inject: ClassVar[int] = 0

    steps: int = Field(15, ge=1, le=1000, description="solver steps of a full trajectory")
    strength: float = Field(1.0, gt=0, le=1, description="fraction of the trajectory inverted then re-generated")
    inversion_guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the source prompt while inverting (unset: FLUX 2, SD3 1)"
    )
    inject: int | None = Field(
        None, ge=0, le=1000, description="first editing steps sharing the inversion's attention values (unset: the method's FLUX default, SD3 0)"
    )

    @model_validator(mode="after")
    def _inject_within_steps(self) -> SolverInversionParams:
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


class SolverEditParams(Params):
    """What changes only the edit."""

    guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the target prompt (unset: FLUX 2 as in the paper, SD3 7.0)"
    )


class FlowSolverMethod(Method):
    """Inversion with the source prompt, then sampling with the target prompt, both by `solve`."""

    families = ("sd3", "flux")

    # The method's solver (diffusion/flow.py), as a staticmethod: integrates the flow ODE along a path
    # of (sigma, sigma', editing step) triples, switching `sharing` (or None) per model call.
    solve: ClassVar[Solve]

    def invert(
        self,
        backbone: FlowBackbone,
        samples: Sequence[Sample],
        params: SolverInversionParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        x = backbone.encode_images(images_tensor(samples, backbone.device)).float()
        sigmas = backbone.sigmas(params.steps, x.shape[-1])
        scale = SOLVER_INVERSION_GUIDANCE[backbone.family] if params.inversion_guidance is None else params.inversion_guidance
        guidance = torch.full((len(samples),), scale)
        text = backbone.encode_text(source_prompts(samples))
        negative = negative_text(backbone, len(samples), guidance)
        state: State = {}
        sharing = _sharing(backbone, params, state, save=True)
        with value_sharing(backbone, sharing):
            # The step from sigmas[i] up to sigmas[i - 1] is retraced by editing step i - 1.
            path = [(sigmas[i], sigmas[i - 1], i - 1) for i in range(len(sigmas) - 1, edit_start(params), -1)]
            x = self.solve(backbone, x, path, text, guidance, negative, sharing)
        state["latents"] = x
        return state

    def edit(
        self,
        backbone: FlowBackbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: SolverInversionParams,
        edit_params: Sequence[SolverEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch, points = len(samples), len(edit_params)
        x = state["latents"].float().repeat(points, 1, 1, 1)
        sigmas = backbone.sigmas(invert_params.steps, x.shape[-1])
        default = SOLVER_EDIT_GUIDANCE[backbone.family]
        guidance = torch.tensor([default if p.guidance is None else p.guidance for p in edit_params])
        guidance = guidance.repeat_interleave(batch)
        negative = negative_text(backbone, batch * points, guidance)
        text = backbone.encode_text(target_prompts(samples)).repeat(points)
        sharing = _sharing(backbone, invert_params, state, save=False)
        with value_sharing(backbone, sharing):
            path = [(sigmas[i], sigmas[i + 1], i) for i in range(edit_start(invert_params), len(sigmas) - 1)]
            x = self.solve(backbone, x, path, text, guidance, negative, sharing)
        return list(backbone.decode(x).split(batch))


def _sharing(backbone: FlowBackbone, params: SolverInversionParams, state: State, save: bool) -> ValueSharing | None:
    """The feature sharing of the first `inject` editing steps, or None when there is none."""
    inject = params.resolved_inject(backbone.family)
    if inject == 0:
        return None
    first = edit_start(params)
    return ValueSharing(state, save, set(range(first, first + inject)))
