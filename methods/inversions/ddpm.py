"""`ddpm`: edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024), diffusion/ddpm_inversion.py.

The input's noisy latents are drawn independently per step, and the noise maps that make the DDPM
sampler retrace them (under the source prompt at `source_guidance`) are solved for. Editing starts
`skip` steps into the schedule from the latent there and samples with those maps; the source rows
keep `source_guidance` so they retrace the input, the target rows use the edit's scale. Defaults
are the paper's and its code's (`inbarhub/DDPM_inversion`, `main_run.py`): 100 steps, skip 36,
source CFG 3.5, eta 1; the paper edits at guidance 15.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from pydantic import Field, model_validator

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, make_schedule
from editsweep.diffusion.ddpm_inversion import ddpm_invert, ddpm_step
from editsweep.diffusion.inputs import images_tensor, source_prompts
from editsweep.diffusion.inverted import Inverted
from editsweep.methods.inversions.base import Inversion, State, register_inversion


class DDPMInversionParams(Params):
    """Everything here changes the inversion."""

    steps: int = Field(100, ge=2, le=1000, description="DDPM steps")
    skip: int = Field(36, ge=0, le=999, description="steps skipped at the start of editing (T_skip)")
    source_guidance: float = Field(3.5, ge=0, le=50, description="CFG scale of the source prompt (inversion and source rows)")
    eta: float = Field(1.0, gt=0, le=1, description="DDPM noise scale")

    @model_validator(mode="after")
    def _skip_below_steps(self) -> DDPMInversionParams:
        if self.skip >= self.steps:
            raise ValueError(f"skip ({self.skip}) must be below steps ({self.steps}): editing needs a step left")
        return self


@register_inversion
class DDPMInversion(Inversion):
    """Edit-friendly DDPM inversion: the noise maps of every step and the latent `skip` steps in."""

    name = "ddpm"
    Params = DDPMInversionParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: DDPMInversionParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        cond = backbone.encode_text(source_prompts(samples))
        uncond = backbone.encode_text([""] * len(samples))
        schedule = make_schedule(backbone, params.steps)
        xts, zs = ddpm_invert(backbone, latents, schedule, cond, uncond, params.source_guidance, params.eta, generators)
        return {"start": xts[params.steps - params.skip], "noise_maps": zs[params.skip :]}

    def inverted(
        self, backbone: Backbone, state: State, samples: Sequence[Sample], params: DDPMInversionParams
    ) -> Inverted:
        full = make_schedule(backbone, params.steps)
        schedule = Schedule(timesteps=full.timesteps[params.skip :], alphas=full.alphas[params.skip :])
        return Inverted(
            schedule=schedule,
            start=state["start"],
            uncond=backbone.encode_text([""] * len(samples)),
            advance=partial(_advance, schedule, state["noise_maps"], params.eta),
            source_guidance=params.source_guidance,
        )


def _advance(schedule: Schedule, noise_maps: torch.Tensor, eta: float, i: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Step i with sample b's noise map on every row of sample b (rows repeat the samples)."""
    z = noise_maps[i]
    z = z.repeat(x.shape[0] // z.shape[0], 1, 1, 1)
    return ddpm_step(x, eps, z, schedule.alphas[i].item(), schedule.alphas[i + 1].item(), eta)
