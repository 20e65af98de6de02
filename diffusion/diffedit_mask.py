"""DiffEdit's mask (Couairon et al. 2023, "DiffEdit: Diffusion-based semantic image editing with
mask guidance", step 1): where the noise predictions of two prompts disagree.

The input's latent is noised to `strength` with n independent draws; for each, the UNet predicts
the noise (classifier-free guided) under the source (reference) prompt and under the target
(query) prompt; the absolute difference, averaged over the draws and the latent channels, is a
(h, w) map at the latent resolution. As diffusers' `StableDiffusionDiffEditPipeline.generate_mask`
(`diffusers/pipelines/deprecated/stable_diffusion_diffedit/`, the reference this follows, with the
paper's defaults n = 10, strength 0.5, threshold 0.5), the map is clamped at `clamp` times its mean,
divided by that value (so it lies in [0, 1]) and binarised: above `threshold` is the edit region.
No smoothing (the reference has none). Two deliberate differences (tests/diffusion/test_diffedit_mask.py
compares with one sample, and pins the second):
- the clamp is each sample's own mean, where diffusers takes the mean over its whole batch (so its
  masks depend on which images share a call);
- a sample whose source and target prompts are the same string has an empty mask: its map is zero
  by definition (diffusers divides 0 by 0 there and marks every cell as edited).
Other methods (Blended Latent Diffusion's `mask: diffedit`) use the mask as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.diffusion.backbone import Backbone
from editsweep.datasets.base import Sample
from editsweep.diffusion.ddim import Schedule, encoding_start, predict_noise
from editsweep.diffusion.inputs import forked, source_prompts, target_prompts


MAP_KEYS = {"mask_samples", "mask_strength", "mask_clamp", "mask_guidance"}
"""The parameters a map depends on (the threshold only binarises it)."""


class DiffEditMaskParams(Params):
    """The mask's hyperparameters (DiffEdit's defaults; `mask_clamp` and `mask_guidance` as diffusers)."""

    mask_samples: int = Field(10, ge=1, le=100, description="n: noise draws whose differences are averaged")
    mask_strength: float = Field(0.5, gt=0, le=1, description="noise level of the draws, as a fraction of the steps")
    mask_threshold: float = Field(0.5, ge=0, lt=1, description="binarisation threshold of the normalised map")
    mask_clamp: float = Field(
        3.0, gt=0, le=100, description="the map is clamped at this multiple of its mean, then divided by it"
    )
    mask_guidance: float = Field(7.5, ge=0, le=50, description="CFG scale of both noise predictions")


@torch.no_grad()
def diffedit_maps(
    backbone: Backbone,
    latents: torch.Tensor,
    source: Sequence[str],
    target: Sequence[str],
    schedule: Schedule,
    params: DiffEditMaskParams,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """(B, h, w) mean absolute difference of the target's and the source's guided noise predictions
    over `mask_samples` noisings of `latents` (B, C, h, w) at `mask_strength` of `schedule`.

    Sample b's noise is one draw of (n, C, h, w) from `generators[b]` (on its device, then moved).
    """
    batch, n = len(latents), params.mask_samples
    start = encoding_start(schedule.steps, params.mask_strength)
    alpha = schedule.alphas[start].item()
    noise = torch.stack([torch.randn((n, *latents.shape[1:]), generator=g, device=g.device) for g in generators])
    noisy = (alpha**0.5 * latents.float()[:, None] + (1 - alpha) ** 0.5 * noise.to(latents.device)).flatten(0, 1)
    embeddings = backbone.encode_text([*source, *target]).repeat_interleave(n, dim=0)
    uncond = backbone.encode_text([""]).expand(2 * batch * n, -1, -1)
    eps = predict_noise(
        backbone,
        torch.cat([noisy, noisy]),
        schedule.timesteps[start],
        embeddings,
        uncond,
        params.mask_guidance,
        alpha=alpha,
    )
    eps_source, eps_target = eps.view(2, batch, n, *latents.shape[1:]).unbind(0)
    maps = (eps_target - eps_source).abs().mean(dim=(1, 2))
    same = torch.tensor([s == t for s, t in zip(source, target, strict=True)], device=maps.device)
    return torch.where(same[:, None, None], torch.zeros_like(maps), maps)


def binarise(maps: torch.Tensor, clamp: float, threshold: float) -> torch.Tensor:
    """(B, h, w) 0/1 masks: each map clamped at `clamp` times its mean, divided by that, above `threshold`."""
    magnitude = (maps.mean(dim=(1, 2), keepdim=True) * clamp).clamp_min(torch.finfo(maps.dtype).tiny)
    return (torch.minimum(maps, magnitude) / magnitude > threshold).float()


def point_masks(
    backbone: Backbone,
    latents: torch.Tensor,
    samples: Sequence[Sample],
    schedule: Schedule,
    points: Sequence[DiffEditMaskParams],
    generators: Sequence[torch.Generator],
) -> list[torch.Tensor]:
    """Each point's (B, h, w) DiffEdit masks; points that differ only in the threshold share one map,
    and every map's noise is the start of the samples' generators (common random numbers)."""
    source, target = source_prompts(samples), target_prompts(samples)
    maps: dict[tuple, torch.Tensor] = {}
    masks = []
    for p in points:
        key = tuple(sorted(p.model_dump(include=MAP_KEYS).items()))
        if key not in maps:
            maps[key] = diffedit_maps(backbone, latents, source, target, schedule, p, forked(generators))
        masks.append(binarise(maps[key], p.mask_clamp, p.mask_threshold))
    return masks
