"""`flow_inversion`: Euler inversion of a rectified flow (SD3, FLUX) under the source prompt, then
Euler sampling under the target prompt - the flow models' counterpart of `ddim_edit`, and the
baseline the rectified-flow inversion papers improve on (RF-Inversion, Rout et al. 2025, Sec. 3;
RF-Solver, Wang et al. 2024, Sec. 3.2: "vanilla" first-order inversion).

The inversion integrates the ODE from the clean latent (sigma 0) up to the noise level where
editing starts (`strength` of the `steps` schedule; diffusion/flow.py `flow_invert`), with guidance
`inversion_guidance` (1: the unguided flow, which the sampler retraces best). Editing samples back
with the target prompt at `guidance` (unset: the family pipeline's default, SD3 7.0 with CFG,
FLUX.1-dev 3.5 through its guidance embedding). At guidance 1 with the target prompt equal to the
source prompt it reconstructs the input closely (tests/methods/test_flow_inversion.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import (
    PIPELINE_GUIDANCE,
    FlowBackbone,
    FlowInversionParams,
    FlowSampleParams,
    edit_start,
    flow_invert,
    flow_sample,
    negative_text,
)
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.methods.base import Method, State, register_method

@register_method
class FlowInversion(Method):
    """First-order flow inversion with the source prompt, sampling with the target prompt."""

    name = "flow_inversion"
    families = ("sd3", "flux")
    InvertParams = FlowInversionParams
    EditParams = FlowSampleParams

    def invert(
        self,
        backbone: FlowBackbone,
        samples: Sequence[Sample],
        params: FlowInversionParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        sigmas = backbone.sigmas(params.steps, latents.shape[-1])
        start = edit_start(params)
        guidance = torch.full((len(samples),), params.inversion_guidance)
        text = backbone.encode_text(source_prompts(samples))
        negative = negative_text(backbone, len(samples), guidance)
        return {"latents": flow_invert(backbone, latents, sigmas, text, guidance, negative, start)}

    def edit(
        self,
        backbone: FlowBackbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: FlowInversionParams,
        edit_params: Sequence[FlowSampleParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        noisy = state["latents"].float()
        batch, points = len(samples), len(edit_params)
        sigmas = backbone.sigmas(invert_params.steps, noisy.shape[-1])
        default = PIPELINE_GUIDANCE[backbone.family]
        guidance = torch.tensor([default if p.guidance is None else p.guidance for p in edit_params])
        negative = negative_text(backbone, batch * points, guidance)
        latents = flow_sample(
            backbone,
            noisy.repeat(points, 1, 1, 1),
            sigmas,
            backbone.encode_text(target_prompts(samples)).repeat(points),
            guidance.repeat_interleave(batch),
            negative,
            start=edit_start(invert_params),
        )
        return list(backbone.decode(latents).split(batch))
