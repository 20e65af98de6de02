"""InstructPix2Pix's guided sampling (diffusion/instruct_pix2pix.py) against diffusers'
`StableDiffusionInstructPix2PixPipeline` on the same tiny-ip2p weights, inputs and noise."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.instruct_pix2pix import image_conditioning, ip2p_sample, predict_noise_ip2p

PROMPTS = ["turn the cat into a dog", "make it red"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-ip2p")


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=64, mode="bicubic")
    return images.clamp(0, 1), torch.randn(2, 4, 8, 8, generator=g)


def test_tiny_ip2p_has_an_instruction_unet(backbone):
    assert backbone.unet_in_channels == 8 and backbone.unet.config.out_channels == 4
    assert backbone.weights_source == "tiny-ip2p:random"


def test_sampling_matches_the_diffusers_pipeline(backbone, inputs):
    images, noise = inputs
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt=PROMPTS,
        image=images,
        num_inference_steps=6,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        latents=noise.clone(),
        output_type="latent",
    ).images
    conditioning = image_conditioning(backbone, images)
    expected = pipe.prepare_image_latents(images * 2 - 1, 2, 1, torch.float32, backbone.device, False)
    torch.testing.assert_close(conditioning, expected, rtol=0, atol=1e-6)
    ours = ip2p_sample(
        backbone,
        noise,
        make_schedule(backbone, 6),
        conditioning,
        backbone.encode_text(PROMPTS),
        backbone.encode_text(["", ""]),
        torch.tensor([7.5, 7.5]),
        torch.tensor([1.5, 1.5]),
    )
    # Measured: 4.8e-6 on latents of magnitude up to ~25 (the random UNet under guidance 7.5).
    assert (ours - reference).abs().max().item() < 1e-4


def test_each_row_keeps_its_own_scales(backbone, inputs):
    images, noise = inputs
    conditioning = image_conditioning(backbone, images)
    cond, uncond = backbone.encode_text(PROMPTS), backbone.encode_text(["", ""])
    t = make_schedule(backbone, 10).timesteps[3]
    together = predict_noise_ip2p(
        backbone, noise, t, conditioning, cond, uncond, torch.tensor([7.5, 1.0]), torch.tensor([1.5, 3.0])
    )
    for b, (s_t, s_i) in enumerate([(7.5, 1.5), (1.0, 3.0)]):
        alone = predict_noise_ip2p(
            backbone, noise[b : b + 1], t, conditioning[b : b + 1], cond[b : b + 1], uncond[b : b + 1],
            torch.tensor([s_t]), torch.tensor([s_i]),
        )
        torch.testing.assert_close(together[b : b + 1], alone, rtol=0, atol=1e-5)


def test_unit_scales_are_the_text_and_image_branch_alone(backbone, inputs):
    images, noise = inputs
    conditioning = image_conditioning(backbone, images)
    cond, uncond = backbone.encode_text(PROMPTS), backbone.encode_text(["", ""])
    t = make_schedule(backbone, 10).timesteps[3]
    one = torch.ones(2)
    shortcut = predict_noise_ip2p(backbone, noise, t, conditioning, cond, uncond, one, one)
    near_one = predict_noise_ip2p(backbone, noise, t, conditioning, cond, uncond, one, one + 1e-7)
    torch.testing.assert_close(shortcut, near_one, rtol=0, atol=1e-5)


def test_sdxl_sampling_matches_the_diffusers_pipeline(inputs):
    """tiny-sdxl-ip2p against `StableDiffusionXLInstructPix2PixPipeline` with DDIM: the same image
    latents (unscaled mode), zeros as the unconditional text (force_zeros_for_empty_prompt), the
    pooled and size conditioning from the backbone's packed text (diffusion/sdxl.py)."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    sdxl = load_backbone("tiny-sdxl-ip2p")
    assert sdxl.family == "sdxl" and sdxl.unet_in_channels == 8
    images, noise = inputs
    pipe = StableDiffusionXLInstructPix2PixPipeline(
        **{k: v for k, v in sdxl.pipe.components.items() if k in ("vae", "unet", "tokenizer", "tokenizer_2")},
        text_encoder=sdxl.text_encoder,
        text_encoder_2=sdxl.text_encoder_2,
        scheduler=DDIMScheduler.from_config(sdxl.scheduler.config),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt=PROMPTS, image=images, num_inference_steps=6, guidance_scale=5.0, image_guidance_scale=1.5,
        latents=noise.clone(), output_type="latent",
    ).images
    conditioning = image_conditioning(sdxl, images)
    ours = ip2p_sample(
        sdxl, noise, make_schedule(sdxl, 6), conditioning, sdxl.encode_text(PROMPTS), sdxl.encode_text(["", ""]),
        torch.tensor([5.0, 5.0]), torch.tensor([1.5, 1.5]),
    )
    assert (ours - noise).abs().max() > 1  # the check is not vacuous
    # Measured: 5.7e-6 on latents of magnitude up to ~25.
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=5e-5)
