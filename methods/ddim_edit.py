"""`ddim_edit`: DDIM inversion with the source prompt, then DDIM sampling with the target prompt.

The classic baseline ("DDIM-Edit" in Prompt Tuning Inversion, "DDIM" rows of PIE-Bench without
attention control). Inversion runs once per group; all guidance values of a sweep are denoised
together in one batch. An encoding ratio below 1 inverts only that fraction of the trajectory and
samples from there (as DiffEdit and Prompt Tuning Inversion do).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import ddim_invert, ddim_sample, encoding_start, make_schedule
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.methods.base import Method, Params, State, register_method


class DDIMInvertParams(Params):
    """What changes the inversion: the schedule and the guidance used while inverting."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps, for inversion and sampling")
    inversion_guidance: float = Field(1.0, ge=0, le=50, description="CFG scale while inverting")
    encoding_ratio: float = Field(
        1.0, gt=0, le=1, description="fraction of the trajectory inverted; sampling restarts from there"
    )


class DDIMEditParams(Params):
    """What only changes the edit."""

    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale while sampling with the target prompt")


@register_method
class DDIMEdit(Method):
    """DDIM inversion (source prompt) then DDIM sampling (target prompt), no attention control."""

    name = "ddim_edit"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    InvertParams = DDIMInvertParams
    EditParams = DDIMEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: DDIMInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        cond = backbone.encode_text(source_prompts(samples))
        uncond = backbone.encode_text([""] * len(samples)) if params.inversion_guidance != 1 else None
        schedule = make_schedule(backbone, params.steps)
        start = encoding_start(params.steps, params.encoding_ratio)
        trajectory = ddim_invert(backbone, latents, schedule, cond, uncond, params.inversion_guidance, start)
        return {"noise_latents": trajectory[-1]}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: DDIMInvertParams,
        edit_params: Sequence[DDIMEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        n_points, batch = len(edit_params), len(samples)
        latents = state["noise_latents"].repeat(n_points, 1, 1, 1)
        cond = backbone.encode_text(target_prompts(samples)).repeat(n_points, 1, 1)
        uncond = backbone.encode_text([""] * batch).repeat(n_points, 1, 1)
        guidance = torch.tensor([p.guidance for p in edit_params], device=backbone.device).repeat_interleave(batch)
        schedule = make_schedule(backbone, invert_params.steps)
        start = encoding_start(invert_params.steps, invert_params.encoding_ratio)
        images = backbone.decode(ddim_sample(backbone, latents, schedule, cond, uncond, guidance, start))
        return list(images.split(batch))
