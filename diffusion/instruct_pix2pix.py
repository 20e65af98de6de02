"""InstructPix2Pix's sampling (Brooks et al. 2023, "InstructPix2Pix: Learning to Follow Image Editing
Instructions"): a UNet with 8 input channels, the noisy latent and the input image's latent, guided
by the instruction and the image with two scales (the paper's Eq. 3):

    eps = eps(0, 0) + s_I * (eps(c_I, 0) - eps(0, 0)) + s_T * (eps(c_I, c_T) - eps(c_I, 0))

After diffusers' `StableDiffusionInstructPix2PixPipeline`
(`pipelines/stable_diffusion/pipeline_stable_diffusion_instruct_pix2pix.py`): the image conditioning
is the VAE posterior's mode, not scaled by the VAE's scaling factor; the unconditional image is
zeros and the unconditional text the empty prompt; the three branches are one UNet call in the
order (text + image, image, neither). Deliberate difference: the pipeline skips guidance altogether
when s_T <= 1 or s_I < 1 (one pass with text and image); here Eq. 3 holds at every scale, so that
image guidance still acts at text guidance 1, and the scales may differ per batch row.
tests/diffusion/test_instruct_pix2pix.py compares with the pipeline.
"""

from __future__ import annotations

import torch

from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, ddim_move, unet_epsilon

UNET_IN_CHANNELS = 8  # the noisy latent (4) and the image latent (4)


@torch.no_grad()
def image_conditioning(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """The image latents c_I (B, 4, h, w) of images (B, 3, H, W) in [0, 1]: the VAE posterior's
    mode, unscaled, as the pipeline's `prepare_image_latents` (`sample_mode="argmax"`)."""
    x = images.to(backbone.device, backbone.vae.dtype) * 2 - 1
    return backbone.vae.encode(x).latent_dist.mode().to(backbone.dtype)


def predict_noise_ip2p(
    backbone: Backbone,
    latents: torch.Tensor,
    t: torch.Tensor,
    image_latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    text_guidance: torch.Tensor,
    image_guidance: torch.Tensor,
    alpha: float | None = None,
) -> torch.Tensor:
    """Eq. 3's noise prediction, with one (s_T, s_I) per batch row; a single UNet pass (text and
    image) when every row has s_T = s_I = 1, where Eq. 3 reduces to it."""
    s_t = text_guidance.to(latents.device, torch.float32).view(-1, 1, 1, 1)
    s_i = image_guidance.to(latents.device, torch.float32).view(-1, 1, 1, 1)
    if bool((s_t == 1).all() and (s_i == 1).all()):
        return unet_epsilon(backbone, torch.cat([latents, image_latents.to(latents.dtype)], dim=1), t, cond, alpha)
    x = torch.cat([latents] * 3)
    image = image_latents.to(latents.dtype)
    inputs = torch.cat([x, torch.cat([image, image, torch.zeros_like(image)])], dim=1)
    eps = unet_epsilon(backbone, inputs, t, torch.cat([cond, uncond, uncond]), alpha)
    eps_text, eps_image, eps_uncond = eps.chunk(3)
    return eps_uncond + s_i * (eps_image - eps_uncond) + s_t * (eps_text - eps_image)


@torch.no_grad()
def ip2p_sample(
    backbone: Backbone,
    latents: torch.Tensor,
    schedule: Schedule,
    image_latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    text_guidance: torch.Tensor,
    image_guidance: torch.Tensor,
) -> torch.Tensor:
    """Denoise pure-noise latents to x_0 with DDIM (eta 0) under Eq. 3's guidance."""
    x = latents.float()
    for i in range(schedule.steps):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = predict_noise_ip2p(
            backbone, x, schedule.timesteps[i], image_latents, cond, uncond, text_guidance, image_guidance, a_from
        )
        x = ddim_move(x, eps, a_from, a_to)
    return x
