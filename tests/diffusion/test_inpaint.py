"""Inpainting (diffusion/inpaint.py) against diffusers' `StableDiffusionInpaintPipeline` on the same
tiny-inpaint weights, image, mask, prompt and initial noise, and what each `keep_outside` keeps."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.inpaint import inpaint_sample, latent_mask, masked_image_latents, strength_start

PROMPTS = ["a photo of a dog", "a red car"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-inpaint")


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=64, mode="bicubic")
    masks = torch.zeros(2, 64, 64)
    masks[0, 10:40, 20:50] = 1
    masks[1, 30:64, 0:29] = 1  # edges that do not fall on the 8-pixel latent grid
    return images.clamp(0, 1), masks


def pipeline(backbone) -> StableDiffusionInpaintPipeline:
    pipe = StableDiffusionInpaintPipeline(
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
    # The pipeline samples the VAE posterior; editsweep takes its mean (the one pinned difference).
    pipe._encode_vae_image = lambda image, generator: backbone.encode_images((image + 1) / 2)
    return pipe


def test_tiny_inpaint_has_an_inpainting_unet(backbone):
    assert backbone.unet_in_channels == 9 and backbone.unet.config.out_channels == 4
    assert backbone.weights_source == "tiny-inpaint:random"


def test_strength_start_is_the_pipelines(backbone):
    pipe = pipeline(backbone)
    for steps, strength in [(50, 1.0), (50, 0.75), (10, 0.3), (6, 0.5), (7, 0.7)]:
        pipe.scheduler.set_timesteps(steps)
        timesteps, kept = pipe.get_timesteps(steps, strength, backbone.device)
        start = strength_start(steps, strength)
        assert kept == steps - start and torch.equal(timesteps, make_schedule(backbone, steps).timesteps[start:])
    assert strength_start(10, 0.01) == 9  # at least one step (the pipeline refuses zero)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_sampling_matches_the_diffusers_pipeline(backbone, inputs, strength):
    images, masks = inputs
    steps, guidance = 6, 7.5
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    reference = pipeline(backbone)(
        prompt=PROMPTS,
        image=images,
        mask_image=masks[:, None],
        height=64,
        width=64,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(1),  # its noise draw is `noise`
        output_type="latent",
    ).images
    clean = backbone.encode_images(images)
    ours = inpaint_sample(
        backbone,
        clean,
        noise,
        make_schedule(backbone, steps),
        strength_start(steps, strength),
        latent_mask(masks, (8, 8)),
        masked_image_latents(backbone, images, masks),
        backbone.encode_text(PROMPTS),
        backbone.encode_text(["", ""]),
        torch.full((2,), guidance),
    )
    error = (ours - reference).abs().max().item()
    assert error < 1e-4, error


def test_mask_and_masked_image_are_the_pipelines(backbone, inputs):
    images, masks = inputs
    pipe = pipeline(backbone)
    condition = pipe.mask_processor.preprocess(masks[:, None], height=64, width=64)
    expected_mask, expected_latents = pipe.prepare_mask_latents(
        condition, (images * 2 - 1) * (condition < 0.5), 2, 64, 64, torch.float32, backbone.device, None, False
    )
    assert torch.equal(latent_mask(masks, (8, 8)), expected_mask)
    torch.testing.assert_close(masked_image_latents(backbone, images, masks), expected_latents, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_keep_latent_leaves_the_input_latent_outside_the_mask(backbone, inputs, strength):
    """`keep_outside: latent`: the final latent equals the input's latent exactly in every cell outside
    the latent mask; without it (`none`) the 9-channel UNet alone changes those cells."""
    images, masks = inputs
    clean = backbone.encode_images(images)
    mask = latent_mask(masks, (8, 8))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    args = (
        make_schedule(backbone, 6), strength_start(6, strength), mask, masked_image_latents(backbone, images, masks),
        backbone.encode_text(PROMPTS), backbone.encode_text(["", ""]), torch.full((2,), 7.5),
    )
    kept = inpaint_sample(backbone, clean, noise, *args, keep_latent=True)
    free = inpaint_sample(backbone, clean, noise, *args)
    outside = (mask == 0).expand_as(clean)
    assert torch.equal(kept[outside], clean[outside])
    assert not torch.equal(kept[~outside], clean[~outside])
    assert (free[outside] - clean[outside]).abs().max() > 0.1
