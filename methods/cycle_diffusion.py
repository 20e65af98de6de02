"""`cycle_diffusion`: CycleDiffusion (Wu and De la Torre 2023, "A Latent Space of Stochastic Diffusion
Models for Zero-Shot Image Editing and Guidance"), diffusion/cycle_diffusion.py.

The input's latent code under the source prompt (x at `strength` of the schedule and one noise map per
step of DDIM with `eta`), then sampling with the target prompt from the same code. As diffusers'
`CycleDiffusionPipeline` (`pipelines/deprecated/stable_diffusion_variants/pipeline_cycle_diffusion.py`)
and its defaults: 50 steps, strength 0.8, eta 0.1, source guidance 1, target guidance 7.5 (the paper's
code `ChenWu98/cycle-diffusion` and the pipeline's examples use 100 steps and guidance 2-3).

A method of its own, not an inversion + editor pair: its edit is plain sampling with the target prompt
(no source rows, no attention control), which no editor of methods/editors/ does, and its step is
DDIM's with eta (sigma^2 = eta^2 var), not the edit-friendly DDPM step the `ddpm` inversion hands editors.

Deliberate differences from the pipeline (tests/methods/test_cycle_diffusion.py): the input is
encoded to the posterior mean (the pipeline samples the VAE posterior); each scale applies as given,
where the pipeline turns classifier-free guidance off for both prompts when the target's is <= 1 (the
same at 1); and a batch is any number of samples (the pipeline's guided path takes one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, model_validator

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.cycle_diffusion import cycle_encode, cycle_step
from editsweep.diffusion.ddim import make_schedule, predict_noise
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.methods.base import Method, State, register_method


class CycleInvertParams(Params):
    """What changes the latent code."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the whole schedule")
    strength: float = Field(0.8, gt=0, le=1, description="fraction of the schedule encoded and resampled")
    eta: float = Field(0.1, gt=0, le=1, description="DDIM eta of the stochastic sampler")
    source_guidance: float = Field(1.0, ge=0, le=50, description="CFG scale of the source prompt while encoding")

    @model_validator(mode="after")
    def _a_step(self) -> CycleInvertParams:
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"strength {self.strength} of {self.steps} steps leaves no step to encode")
        return self

    @property
    def start(self) -> int:
        """The first sampling step, as the pipeline's `get_timesteps`."""
        return self.steps - min(int(self.steps * self.strength), self.steps)


class CycleEditParams(Params):
    """What only changes the edit."""

    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale of the target prompt")


@register_method
class CycleDiffusion(Method):
    """The latent code of the input under the source prompt, decoded under the target prompt."""

    name = "cycle_diffusion"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    InvertParams = CycleInvertParams
    EditParams = CycleEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: CycleInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        cond = backbone.encode_text(source_prompts(samples))
        uncond = backbone.encode_text([""] * len(samples))
        schedule = make_schedule(backbone, params.steps)
        start, maps = cycle_encode(
            backbone, latents, schedule, params.start, cond, uncond, params.source_guidance, params.eta, generators
        )
        return {"start": start, "noise_maps": maps}

    @torch.no_grad()
    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: CycleInvertParams,
        edit_params: Sequence[CycleEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        n_points, batch = len(edit_params), len(samples)
        schedule = make_schedule(backbone, invert_params.steps)
        cond = backbone.encode_text(target_prompts(samples)).repeat(n_points, 1, 1)
        uncond = backbone.encode_text([""] * batch).repeat(n_points, 1, 1)
        guidance = torch.tensor([p.guidance for p in edit_params]).repeat_interleave(batch)
        maps = state["noise_maps"].float().repeat(1, n_points, 1, 1, 1)
        x = state["start"].float().repeat(n_points, 1, 1, 1)
        for k, i in enumerate(range(invert_params.start, schedule.steps)):
            a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
            eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, guidance, alpha=a_from)
            x = cycle_step(x, eps, maps[k], a_from, a_to, invert_params.eta)
        return list(backbone.decode(x).split(batch))
