"""`inpaint`: editing by inpainting the edit region with Stable Diffusion's inpainting model under the
target prompt (the role GLIDE's inpainting plays in the editing surveys), diffusion/inpaint.py's
sampling (diffusers' `StableDiffusionInpaintPipeline`, DDIM eta 0, its defaults: 50 steps, guidance
7.5, strength 1).

The mask is the dataset's (`sample.meta["mask"]`, PIE-Bench's edit region, at the image size by
diffusion/masks.py's `dataset_mask`) or, with `mask: diffedit`, DiffEdit's mask from the prompts
(diffusion/diffedit_mask.py) computed on the inpainting UNet with everything masked
(`fully_masked`). With `mask: dataset` a sample without a mask is an error for that sample alone,
raised in `invert`. The pipeline has no mask dilation or blur in its call (its `mask_processor.blur`
is a separate utility), so neither is a parameter here.

`invert` encodes the input and its masked image, makes the mask, and draws each sample's initial
noise from its own generator (before DiffEdit's draws), so every edit point of a sample starts from
the same noise. `edit` runs one batched loop per (steps, start step, latent keeping) with each row's
guidance. `keep_outside` (diffusion/inpaint.py) defaults to `none`, the pipeline's and the model's
own behaviour: benchmarks that score background preservation (PIE-Bench's unedited-region metrics)
then measure the model, where `pixel` would make them perfect by construction and `latent` would
score the VAE round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone, require_unet, unet_refusal
from editsweep.diffusion.blending import upsample_mask
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.diffedit_mask import DiffEditMaskParams, binarise, diffedit_maps
from editsweep.diffusion.inpaint import (
    UNET_IN_CHANNELS,
    KeepOutside,
    fully_masked,
    inpaint_sample,
    latent_mask,
    masked_image_latents,
    strength_start,
)
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.diffusion.masks import dataset_mask, require_dataset_masks
from editsweep.methods.base import Method, Params, State, register_method

INPAINTING_WEIGHTS = (
    "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "runwayml/stable-diffusion-inpainting",
    "stabilityai/stable-diffusion-2-inpainting",
)


class InpaintInvertParams(DiffEditMaskParams):
    """Where the mask comes from, and DiffEdit's mask parameters (used with `mask: diffedit`)."""

    mask: Literal["dataset", "diffedit"] = Field(
        "dataset", description="the dataset's meta['mask'], or DiffEdit's mask from the prompts"
    )
    mask_steps: int = Field(50, ge=1, le=1000, description="DDIM schedule whose step `mask_strength` picks")


class InpaintEditParams(Params):
    """The pipeline's sampling parameters, and what keeps the input outside the mask."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of a full (strength 1) schedule")
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale with the target prompt")
    strength: float = Field(1.0, gt=0, le=1, description="fraction of the schedule run (1: from pure noise)")
    keep_outside: KeepOutside = Field(
        "none", description="none: the model's output; latent: the input's latent outside the mask after "
        "every step; pixel: the input's pixels outside the mask"
    )


@register_method
class Inpaint(Method):
    """Regenerate the masked region with an inpainting UNet under the target prompt."""

    name = "inpaint"
    InvertParams = InpaintInvertParams
    EditParams = InpaintEditParams

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        return unet_refusal(cls.name, backbone, UNET_IN_CHANNELS, cls._use_instead())

    @classmethod
    def _use_instead(cls) -> str:
        return (
            f"it needs an inpainting model's UNet ({UNET_IN_CHANNELS} input channels: latent, mask and masked-image "
            f"latent); use {' or '.join(map(repr, INPAINTING_WEIGHTS))}, a local diffusers folder of such a model, "
            "or the offline 'tiny-inpaint'"
        )

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: InpaintInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        require_unet(backbone, self.name, UNET_IN_CHANNELS, self._use_instead())
        if params.mask == "dataset":
            require_dataset_masks(self.name, samples)
        images = images_tensor(samples, backbone.device).float()
        clean = backbone.encode_images(images)
        size = tuple(clean.shape[-2:])
        noise = torch.stack([torch.randn(clean.shape[1:], generator=g, device=g.device) for g in generators])
        if params.mask == "dataset":
            pixels = torch.stack([dataset_mask(s, tuple(images.shape[-2:])) for s in samples]).to(clean.device)
        else:
            maps = diffedit_maps(
                fully_masked(backbone, tuple(images.shape[-2:])), clean, source_prompts(samples),
                target_prompts(samples), make_schedule(backbone, params.mask_steps), params, generators,
            )
            pixels = upsample_mask(binarise(maps, params.mask_clamp, params.mask_threshold), tuple(images.shape[-2:]))
        return {
            "latents": clean,
            "noise": noise.to(clean.device),
            "mask": latent_mask(pixels, size),
            "pixel_mask": pixels,
            "masked_latents": masked_image_latents(backbone, images, pixels),
        }

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: InpaintInvertParams,
        edit_params: Sequence[InpaintEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        clean, noise, mask, masked = (state[k].float() for k in ("latents", "noise", "mask", "masked_latents"))
        cond = backbone.encode_text(target_prompts(samples))
        uncond = backbone.encode_text([""] * batch)
        inputs = images_tensor(samples, backbone.device).float()
        outside = (state["pixel_mask"] < 0.5).float()[:, None]
        groups: dict[tuple[int, int, bool], list[int]] = {}
        for k, p in enumerate(edit_params):
            key = (p.steps, strength_start(p.steps, p.strength), p.keep_outside == "latent")
            groups.setdefault(key, []).append(k)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for (steps, start, keep_latent), indices in groups.items():
            n = len(indices)
            latents = inpaint_sample(
                backbone,
                clean.repeat(n, 1, 1, 1),
                noise.repeat(n, 1, 1, 1),
                make_schedule(backbone, steps),
                start,
                mask.repeat(n, 1, 1, 1),
                masked.repeat(n, 1, 1, 1),
                cond.repeat(n, 1, 1),
                uncond.repeat(n, 1, 1),
                torch.tensor([edit_params[k].guidance for k in indices]).repeat_interleave(batch),
                keep_latent=keep_latent,
            )
            for k, images in zip(indices, backbone.decode(latents).split(batch), strict=True):
                if edit_params[k].keep_outside == "pixel":
                    images = outside * inputs + (1 - outside) * images
                results[k] = images
        return results
