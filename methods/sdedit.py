"""`sdedit` (Meng et al. 2022): noise the input to a strength, then denoise with the target prompt.

No inversion: the state is the clean latent. Every edit point of a sample starts from the same
noise draw (common random numbers), so a strength sweep traces a smooth curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import ddim_sample, make_schedule
from editsweep.diffusion.inputs import target_prompts
from editsweep.methods.base import EncodesInput, Params, State, register_method


class SDEditParams(Params):
    """SDEdit's knobs: how far to noise, how strongly to guide, how many steps for a full trajectory."""

    strength: float = Field(0.6, gt=0, le=1, description="fraction of the trajectory re-generated")
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale with the target prompt")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of a full (strength 1) trajectory")


@register_method
class SDEdit(EncodesInput):
    """Partial noising then guided DDIM denoising towards the target prompt."""

    name = "sdedit"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    EditParams = SDEditParams

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[SDEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        clean = state["latents"].float()
        batch = len(samples)
        noise = torch.stack(
            [torch.randn(clean.shape[1:], generator=g, device=g.device) for g in generators]
        ).to(clean.device)
        cond = backbone.encode_text(target_prompts(samples))
        uncond = backbone.encode_text([""] * batch)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        # Points that share a schedule and a start step go through one batched denoising loop.
        by_start: dict[tuple[int, int], list[int]] = {}
        for k, p in enumerate(edit_params):
            start = p.steps - max(1, round(p.strength * p.steps))
            by_start.setdefault((p.steps, start), []).append(k)
        for (steps, start), indices in by_start.items():
            schedule = make_schedule(backbone, steps)
            alpha = schedule.alphas[start].item()
            noisy = (alpha**0.5 * clean + (1 - alpha) ** 0.5 * noise).repeat(len(indices), 1, 1, 1)
            guidance = torch.tensor([edit_params[k].guidance for k in indices], device=clean.device)
            latents = ddim_sample(
                backbone,
                noisy,
                schedule,
                cond.repeat(len(indices), 1, 1),
                uncond.repeat(len(indices), 1, 1),
                guidance.repeat_interleave(batch),
                start=start,
            )
            for k, images in zip(indices, backbone.decode(latents).split(batch)):
                results[k] = images
        return results
