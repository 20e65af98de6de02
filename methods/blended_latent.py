"""`blended_latent`: Blended Latent Diffusion (Avrahami, Fried, Lischinski 2023), after its reference
code `omriav/blended-latent-diffusion` (`scripts/text_editing_SD2.py` for Stable Diffusion,
`ldm/models/diffusion/ddim.py` for the paper's LDM).

The input's latent z_init is noised to the start strength; DDIM denoises it with the target
prompt under classifier-free guidance, and after every step the latent outside the mask is
replaced by z_init noised afresh to the level the step reached (the last step: z_init itself),
so only the masked region is generated (the paper's Algorithm 1). The mask is the dataset's
(`sample.meta["mask"]`, brought to the latent size by the image's center crop and a nearest
resize, as the reference's NEAREST downsampling) or, with `mask: diffedit`, DiffEdit's mask from
the prompts (`diffusion/diffedit_mask.py`). With `mask: dataset` a sample without a mask is an
error for that sample alone, raised before any work (in `invert`).

`background` is the paper's optional background reconstruction (Sec. 4.2; the reference's second
script, `ldm/image_reconstruction.py`): `pixel` replaces the decoded edit outside the (pixel) mask
by the input, so the background is the input's exactly instead of the VAE's round trip of it;
`decoder` fine-tunes a copy of the VAE decoder per image so that decoding the edit's latent gives
the input outside the mask and the plain decoding inside it (diffusion/blending.py `tune_decoder`:
`decoder_steps`, `decoder_lr`, `preservation` are the reference's 75, 1e-4 and 100), which keeps
the background without a seam. The paper tunes on the edit's latent z0; the reference script
re-encodes the saved edited image, because it runs on PNG files after sampling: we use z0. The
default `none` is the reference's: its SD scripts have no background step.

`mask_dilation` is the paper's progressive mask shrinking for thin masks (Sec. 4.3; the
reference's `--mask_dilation_iterations`, default 0 = off): the latent mask dilated by squares of
sides 3 + 2 (d - 1), ..., 3, then the mask itself, each for an equal share of the steps
(diffusion/blending.py `shrinking_masks`, `mask_schedule`). With `mask: diffedit` the mask's noise
level is taken on the edit's schedule (`steps`).

Parameters added after the method's first release (`mask_dilation` and the decoder's) are left out
of the task key at their defaults (core/params.py `added_field`), so earlier runs keep their keys.

Differences from the reference SD script, chosen for the paper's algorithm: it starts from pure
Gaussian noise at the start step (the paper and the LDM code noise the input), and blends after
step i with the input noised to the level step i started from, one step noisier than the latent
it replaces. Every edit point with the same strength, steps and mask draws the same noise (the
start's, then one draw per step) from copies of the samples' generators; with `mask: diffedit`
the mask's draws come first, and points that differ only in strength share its map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from editsweep.core.params import KeepsTaskKeys, Params, added_field
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.blending import blend_outside, mask_schedule, shrinking_masks, tune_decoder, upsample_mask
from editsweep.diffusion.ddim import Schedule, ddim_sample, encoding_start, make_schedule
from editsweep.diffusion.diffedit_mask import MAP_KEYS, DiffEditMaskParams, binarise, diffedit_maps
from editsweep.diffusion.inputs import forked, images_tensor, source_prompts, target_prompts
from editsweep.diffusion.masks import dataset_mask, require_dataset_masks
from editsweep.methods.base import EncodesInput, State, register_method


class BlendedInvertParams(Params):
    """Where the mask comes from (checked against every sample before editing)."""

    mask: Literal["dataset", "diffedit"] = Field(
        "dataset", description="the dataset's meta['mask'], or DiffEdit's mask from the prompts"
    )


class BlendedEditParams(DiffEditMaskParams, KeepsTaskKeys):
    """The sampling, the mask shrinking, the background step, and DiffEdit's mask parameters (used
    with `mask: diffedit`)."""

    strength: float = Field(
        0.75, gt=0, le=1, description="fraction of the schedule re-generated (the reference skips 25%)"
    )
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale with the target prompt")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of a full (strength 1) schedule")
    background: Literal["none", "pixel", "decoder"] = Field(
        "none",
        description="the paper's optional background step: pixel: the input's pixels outside the mask; "
        "decoder: a per-image fine-tuned decoder (Sec. 4.2)",
    )
    mask_dilation: int = added_field(
        0, ge=0, le=16, description="progressive mask shrinking: dilated masks before the real one (0: off)"
    )
    decoder_steps: int = added_field(75, ge=1, le=1000, description="background: decoder: Adam steps")
    decoder_lr: float = added_field(1e-4, gt=0, le=1, description="background: decoder: Adam learning rate")
    preservation: float = added_field(
        100.0, ge=0, le=1e4, description="background: decoder: weight of the outside-mask loss (lambda)"
    )


@register_method
class BlendedLatentDiffusion(EncodesInput):
    """Noise, denoise with the target prompt, keep the input's noised latent outside the mask."""

    name = "blended_latent"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    InvertParams = BlendedInvertParams
    EditParams = BlendedEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: BlendedInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        if params.mask == "dataset":
            require_dataset_masks(self.name, samples)
        return super().invert(backbone, samples, params, generators, seeds)

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: BlendedInvertParams,
        edit_params: Sequence[BlendedEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        clean = state["latents"].float()
        batch, size = len(samples), tuple(clean.shape[-2:])
        inputs = images_tensor(samples, backbone.device).float()
        given = None
        if invert_params.mask == "dataset":
            given = torch.stack([dataset_mask(s, size) for s in samples]).to(clean.device)
        cond = backbone.encode_text(target_prompts(samples))
        uncond = backbone.encode_text([""] * batch)
        # DiffEdit maps by (steps, map params), each with the generators' state after its draws.
        maps: dict[tuple, tuple[torch.Tensor, list[torch.Generator]]] = {}

        def mask_and_streams(p: BlendedEditParams) -> tuple[torch.Tensor, list[torch.Generator]]:
            """The point's latent mask, and copies of the generators to draw its sampling noise from."""
            if given is not None:
                return given, forked(generators)
            key = (p.steps, tuple(sorted(p.model_dump(include=MAP_KEYS).items())))
            if key not in maps:
                streams = forked(generators)
                schedule = make_schedule(backbone, p.steps)
                source, target = source_prompts(samples), target_prompts(samples)
                made = diffedit_maps(backbone, clean, source, target, schedule, p, streams)
                maps[key] = made, streams
            made, streams = maps[key]
            return binarise(made, p.mask_clamp, p.mask_threshold), forked(streams)

        # One denoising loop per group of points that share the noise: schedule, start and mask.
        groups: dict[tuple, list[int]] = {}
        for k, p in enumerate(edit_params):
            mask_key = (
                tuple(sorted(p.model_dump(include=MAP_KEYS | {"mask_threshold"}).items())) if given is None else ()
            )
            key = (p.steps, encoding_start(p.steps, p.strength), mask_key, p.mask_dilation)
            groups.setdefault(key, []).append(k)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for (steps, start, _, dilation), indices in groups.items():
            mask, streams = mask_and_streams(edit_params[indices[0]])
            schedule = make_schedule(backbone, steps)
            latents = blended_sample(
                backbone, clean, mask, schedule, start, cond, uncond, edit_params, indices, streams, dilation
            )
            decoded = backbone.decode(latents).split(batch)
            for k, z, images in zip(indices, latents.split(batch), decoded, strict=True):
                p = edit_params[k]
                if p.background != "none":
                    inside = pixel_masks(samples, mask, tuple(inputs.shape[-2:]), given is not None)
                if p.background == "pixel":
                    images = inside[:, None] * images + (1 - inside[:, None]) * inputs
                elif p.background == "decoder":
                    images = tune_decoder(
                        backbone.vae, z, images, inputs, inside, p.decoder_steps, p.decoder_lr, p.preservation
                    )
                results[k] = images
        return results


def blended_sample(
    backbone: Backbone,
    clean: torch.Tensor,
    mask: torch.Tensor,
    schedule: Schedule,
    start: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    points: Sequence[BlendedEditParams],
    indices: Sequence[int],
    streams: Sequence[torch.Generator],
    dilation: int = 0,
) -> torch.Tensor:
    """Final latents (len(indices) * B, C, h, w), point-major, of the points `indices` sharing one
    schedule, start, mask and mask shrinking (`dilation` dilated masks first); noise is drawn from
    `streams`: the start's, then one per step."""
    n = len(indices)
    masks = shrinking_masks(mask, dilation).repeat(1, n, 1, 1)  # (dilation + 1, n * B, h, w)
    order = mask_schedule(schedule.steps - start, len(masks))

    def draw() -> torch.Tensor:
        noise = torch.stack([torch.randn(clean.shape[1:], generator=g, device=g.device) for g in streams])
        return noise.to(clean.device)

    def noised(alpha: float) -> torch.Tensor:
        return (alpha**0.5 * clean + (1 - alpha) ** 0.5 * draw()).repeat(n, 1, 1, 1)

    def background(i: int) -> torch.Tensor:  # z_init at the level step i reaches; the last step: z_init
        return clean.repeat(n, 1, 1, 1) if i == schedule.steps - 1 else noised(schedule.alphas[i + 1].item())

    guidance = torch.tensor([points[k].guidance for k in indices], device=clean.device)
    return ddim_sample(
        backbone,
        noised(schedule.alphas[start].item()),
        schedule,
        cond.repeat(n, 1, 1),
        uncond.repeat(n, 1, 1),
        guidance.repeat_interleave(len(clean)),
        start=start,
        after_step=blend_outside(lambda i: masks[order[i - start]], background),
    )


def pixel_masks(
    samples: Sequence[Sample], latent_mask: torch.Tensor, size: tuple[int, int], from_dataset: bool
) -> torch.Tensor:
    """(B, H, W) 0/1 masks at the image size: the dataset's own at full resolution, else the latent
    mask's cells upsampled."""
    if from_dataset:
        return torch.stack([dataset_mask(s, size) for s in samples]).to(latent_mask.device)
    return upsample_mask(latent_mask, size)
