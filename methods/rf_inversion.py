"""`rf_inversion` (Rout et al. 2025, "Semantic Image Inversion and Editing using Rectified
Stochastic Differential Equations"): a controlled forward ODE from the image to noise, then a
controlled reverse ODE from that noise to the edit, on the rectified flows (SD3, FLUX).

With t = sigma the noise level (x_sigma = (1 - sigma) x_0 + sigma * noise, diffusion/flow.py):
- inversion (paper Eq. 8): from Y = y0 (the image latent) at sigma 0 up the schedule, the model's
  velocity u (under `inversion_prompt`, the empty prompt in the paper) is mixed with the conditional
  field towards a fixed noise sample y1, u + gamma * ((y1 - Y) / (1 - sigma) - u);
- editing (paper Eq. 15): from the inverted latent down the schedule under the target prompt, the
  model's reverse velocity -v is mixed with the conditional field towards y0,
  -v + eta * ((y0 - X) / sigma + v), with eta active on the steps [start, stop) (fractions of the
  sampled steps; 0 elsewhere).
Both updates are the Euler steps of `flow_invert` / `flow_sample` on the backbone's own schedule,
so gamma 0 and eta 0 give exactly `flow_inversion` (methods/flow_inversion.py;
tests/methods/test_rf_inversion.py). The defaults are those of the paper's FLUX editing setting and
of diffusers' community pipeline `examples/community/pipeline_flux_rf_inversion.py`: 28 steps,
gamma 0.5, eta 0.9 (the pipeline: 1.0), start 0, stop 0.25. That pipeline evaluates the model at
uniform times i / N while stepping by the shifted sigmas; we use the shifted sigmas for both, which
is what makes gamma = eta = 0 the plain Euler inversion. Its `decay_eta` option is not in the paper
and is left out. The velocity interface is shared, so it runs on SD3 (classifier-free guidance)
and FLUX (guidance embedding) alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator

from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import PIPELINE_GUIDANCE, FlowBackbone, FlowInversionParams, edit_start, negative_text
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.methods.base import Method, Params, State, register_method


class RFInversionParams(FlowInversionParams):
    """The controlled forward ODE: the schedule and strength of `flow_inversion`, plus gamma."""

    gamma: float = Field(0.5, ge=0, le=1, description="controller strength towards the noise sample (paper 0.5)")
    inversion_prompt: Literal["empty", "source"] = Field(
        "empty", description="prompt of the velocity while inverting (paper: empty, the unconditional field)"
    )


class RFEditParams(Params):
    """The controlled reverse ODE: eta towards the input's latent on the steps [start, stop)."""

    eta: float = Field(0.9, ge=0, le=1, description="controller strength towards the input (paper 0.9 on FLUX)")
    start: float = Field(0.0, ge=0, le=1, description="fraction of the sampled steps where eta starts (paper 0)")
    stop: float = Field(0.25, ge=0, le=1, description="fraction of the sampled steps where eta stops (0.25)")
    guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the target prompt (unset: SD3 7.0, FLUX 3.5)"
    )

    @model_validator(mode="after")
    def _start_before_stop(self) -> RFEditParams:
        if self.start > self.stop:
            raise ValueError(f"start ({self.start}) must not exceed stop ({self.stop}): eta is active on [start, stop)")
        return self


@register_method
class RFInversion(Method):
    """RF-Inversion: controlled rectified-flow inversion and controlled sampling under the target prompt."""

    name = "rf_inversion"
    families = ("sd3", "flux")
    InvertParams = RFInversionParams
    EditParams = RFEditParams

    def invert(
        self,
        backbone: FlowBackbone,
        samples: Sequence[Sample],
        params: RFInversionParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        y0 = backbone.encode_images(images_tensor(samples, backbone.device)).float()
        # One noise sample y1 per image, from its own generator (reproducible per sample, any batching).
        y1 = torch.stack([torch.randn(y0.shape[1:], generator=g) for g in generators]).to(y0.device)
        sigmas = backbone.sigmas(params.steps, y0.shape[-1])
        guidance = torch.full((len(samples),), params.inversion_guidance)
        prompts = source_prompts(samples) if params.inversion_prompt == "source" else [""] * len(samples)
        text = backbone.encode_text(prompts)
        negative = negative_text(backbone, len(samples), guidance)
        y = y0
        for i in range(len(sigmas) - 1, edit_start(params), -1):
            u = backbone.predict_velocity(y, sigmas[i], text, guidance, negative)
            u = u + params.gamma * ((y1 - y) / (1 - sigmas[i]) - u)
            y = y + (sigmas[i - 1] - sigmas[i]) * u
        return {"latents": y, "image_latents": y0}

    def edit(
        self,
        backbone: FlowBackbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: RFInversionParams,
        edit_params: Sequence[RFEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch, points = len(samples), len(edit_params)
        x = state["latents"].float().repeat(points, 1, 1, 1)
        y0 = state["image_latents"].float().repeat(points, 1, 1, 1)
        sigmas = backbone.sigmas(invert_params.steps, x.shape[-1])
        default = PIPELINE_GUIDANCE[backbone.family]
        guidance = torch.tensor([default if p.guidance is None else p.guidance for p in edit_params])
        guidance = guidance.repeat_interleave(batch)
        negative = negative_text(backbone, batch * points, guidance)
        text = backbone.encode_text(target_prompts(samples)).repeat(points)
        first = edit_start(invert_params)
        n = len(sigmas) - 1 - first
        for k, i in enumerate(range(first, len(sigmas) - 1)):
            # eta of each row at sampled step k (int() as in the community pipeline's window).
            eta = torch.tensor([p.eta if int(p.start * n) <= k < int(p.stop * n) else 0.0 for p in edit_params])
            eta = eta.repeat_interleave(batch).view(-1, 1, 1, 1).to(x.device)
            v = -backbone.predict_velocity(x, sigmas[i], text, guidance, negative)
            v = v + eta * ((y0 - x) / sigmas[i] - v)
            x = x + (sigmas[i] - sigmas[i + 1]) * v
        return list(backbone.decode(x).split(batch))
