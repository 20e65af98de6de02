"""Stable Diffusion inpainting (Rombach et al. 2022, the `sd-v1-5-inpainting` / `sd-2-inpainting`
models; the role GLIDE's inpainting model plays in the editing surveys): a UNet with 9 input
channels, the noisy latent (4), the mask at the latent size (1) and the masked image's latent (4),
denoised with classifier-free guidance under the target prompt.

After diffusers' `StableDiffusionInpaintPipeline`
(`pipelines/stable_diffusion/pipeline_stable_diffusion_inpaint.py`): the pixel mask is binarised at
0.5; the masked image is the input in [-1, 1] times (mask < 0.5), i.e. grey (0 in [-1, 1]) inside
the mask; the latent mask is its nearest-neighbour resize to the latent size (`prepare_mask_latents`);
strength s keeps the last int(s * steps) steps of the schedule and starts from the input's latent
noised to the first of them (`get_timesteps`, `prepare_latents`). The 9-channel UNet is only
*conditioned* on the unmasked region: nothing in the sampling keeps it (the pipeline blends latents
only for 4-channel UNets). `keep_outside` here adds what can keep it:

- `none`: the model's output as is (the pipeline's behaviour);
- `latent`: after every step the latent outside the mask is replaced by the input's latent noised
  with the initial noise to the level the step reached, the last step by the input's latent itself
  (the pipeline's 4-channel rule), so the final latent equals the input's outside the mask exactly
  and the decoded pixels there equal the VAE round trip up to the decoder's reach across the border;
- `pixel`: the decoded edit outside the pixel mask is replaced by the input (what the pipeline's
  `padding_mask_crop` overlay does), so those pixels are the input's exactly.

Deliberate difference: latents are the VAE posterior's mean (editsweep's `encode_images`), where the
pipeline samples the posterior with its generator. tests/diffusion/test_inpaint.py compares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, ddim_move, predict_noise

UNET_IN_CHANNELS = 9  # the noisy latent (4), the mask (1) and the masked image's latent (4)
KeepOutside = Literal["none", "latent", "pixel"]


def strength_start(steps: int, strength: float) -> int:
    """The sampling step a `strength` edit starts from: the pipeline's `get_timesteps` keeps the last
    int(strength * steps) steps (here at least one)."""
    return steps - max(1, min(steps, int(steps * strength)))


def latent_mask(pixel_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) 0/1 masks at the latent `size` from (B, H, W) pixel masks (1 = inpaint):
    binarised at 0.5, then resized by nearest neighbour, as `prepare_mask_latents`."""
    binary = (pixel_masks >= 0.5).float()[:, None]
    return F.interpolate(binary, size=size)


@torch.no_grad()
def masked_image_latents(backbone: Backbone, images: torch.Tensor, pixel_masks: torch.Tensor) -> torch.Tensor:
    """The scaled latents (B, 4, h, w) of images (B, 3, H, W) in [0, 1] greyed inside the (B, H, W)
    masks: the pipeline's `image * (mask < 0.5)` in [-1, 1]."""
    keep = (pixel_masks < 0.5).to(images)[:, None]
    return backbone.encode_images(images * keep + 0.5 * (1 - keep))


@torch.no_grad()
def inpaint_sample(
    backbone: Backbone,
    clean: torch.Tensor,
    noise: torch.Tensor,
    schedule: Schedule,
    start: int,
    mask: torch.Tensor,
    masked_latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: torch.Tensor,
    keep_latent: bool = False,
) -> torch.Tensor:
    """Denoise from `schedule.timesteps[start]` to x_0 with DDIM (eta 0); rows (R) each with their
    input latent `clean`, initial `noise`, `mask` (R, 1, h, w), `masked_latents` and guidance scale.

    Strength 1 (start 0) starts from the noise itself, as the pipeline; otherwise from `clean`
    noised with it. `keep_latent` blends outside the mask after every step (module docstring)."""
    alpha = schedule.alphas[start].item()
    x = noise.float() if start == 0 else alpha**0.5 * clean.float() + (1 - alpha) ** 0.5 * noise.float()
    extra = torch.cat([mask, masked_latents], dim=1).float()
    keep = _keep_outside(clean.float(), noise.float(), mask.float(), schedule) if keep_latent else None
    for i in range(start, schedule.steps):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = predict_noise(
            backbone, torch.cat([x, extra], dim=1), schedule.timesteps[i], cond, uncond, guidance, alpha=a_from
        )
        x = ddim_move(x, eps, a_from, a_to)
        if keep is not None:
            x = keep(i, x)
    return x


def _keep_outside(
    clean: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, schedule: Schedule
) -> Callable[[int, torch.Tensor], torch.Tensor]:
    def blend(i: int, x: torch.Tensor) -> torch.Tensor:
        if i == schedule.steps - 1:
            outside = clean
        else:
            a = schedule.alphas[i + 1].item()
            outside = a**0.5 * clean + (1 - a) ** 0.5 * noise
        return mask * x + (1 - mask) * outside

    return blend


class FullyMaskedUNet(torch.nn.Module):
    """An inpainting UNet used as a text-to-image one: every call gets the mask 1 everywhere and the
    latent of an all-grey masked image (SD inpainting's training masks everything in a quarter of its
    examples), so that 4-channel algorithms (DiffEdit's mask) can run on it."""

    def __init__(self, unet: torch.nn.Module, grey_latent: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.grey_latent = grey_latent
        self.config = unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, sample: torch.Tensor, t: torch.Tensor, **kwargs):
        batch, _, h, w = sample.shape
        ones = torch.ones(batch, 1, h, w, dtype=sample.dtype, device=sample.device)
        grey = self.grey_latent.to(sample).expand(batch, -1, -1, -1)
        return self.unet(torch.cat([sample, ones, grey], dim=1), t, **kwargs)


@torch.no_grad()
def fully_masked(backbone: Backbone, size: tuple[int, int]) -> Backbone:
    """The backbone with its inpainting UNet wrapped in `FullyMaskedUNet`, for images of `size` (H, W)."""
    grey = backbone.encode_images(torch.full((1, 3, *size), 0.5, device=backbone.device))
    return dataclasses.replace(backbone, unet=FullyMaskedUNet(backbone.unet, grey))
