"""DiffEdit's mask (diffusion/diffedit_mask.py) against diffusers' `generate_mask` on the tiny weights."""

import dataclasses

import pytest
import torch

from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.diffedit_mask import DiffEditMaskParams, binarise, diffedit_maps, point_masks
from editsweep.diffusion.inputs import images_tensor

STEPS = 10


@pytest.fixture
def edit_query(generated_samples):
    """A generated cat, edited into a dog."""
    return [dataclasses.replace(generated_samples[0], target_prompt="a photo of a dog")]


def test_mask_is_empty_when_source_and_target_prompts_are_equal(
    tiny_backbone, generated_samples, generators, diffedit_pipeline
):
    """Equal prompts: nothing to edit. Pinned difference: diffusers divides the zero map by its zero
    mean there (0 / 0) and marks every cell as edited."""
    samples = generated_samples[:2]  # source prompt == target prompt
    latents = tiny_backbone.encode_images(images_tensor(samples, tiny_backbone.device))
    schedule = make_schedule(tiny_backbone, STEPS)
    params = DiffEditMaskParams(mask_samples=2)
    (mask,) = point_masks(tiny_backbone, latents, samples, schedule, [params], generators(2))
    assert mask.shape == (2, *latents.shape[-2:]) and not mask.any()
    theirs = diffedit_pipeline(tiny_backbone).generate_mask(
        image=latents[:1],
        source_prompt=samples[0].source_prompt,
        target_prompt=samples[0].target_prompt,
        num_maps_per_mask=params.mask_samples,
        num_inference_steps=STEPS,
        generator=generators(1)[0],
    )
    assert theirs.all()


def test_mask_equals_diffusers_generate_mask(tiny_backbone, edit_query, generators, diffedit_pipeline):
    """Same weights, latents (the posterior mean, passed to diffusers as latents), noise (the sample's
    generator, first draw) and settings: the same binary mask, and one that is neither empty nor full.
    The clamp is per sample here, over the batch there: one sample, so the same."""
    backbone, sample = tiny_backbone, edit_query[0]
    latents = backbone.encode_images(images_tensor(edit_query, backbone.device))
    params = DiffEditMaskParams(mask_samples=4)
    schedule = make_schedule(backbone, STEPS)
    maps = diffedit_maps(
        backbone, latents, [sample.source_prompt], [sample.target_prompt], schedule, params, generators(1)
    )
    ours = binarise(maps, params.mask_clamp, params.mask_threshold)
    theirs = diffedit_pipeline(backbone).generate_mask(
        image=latents,
        source_prompt=sample.source_prompt,
        target_prompt=sample.target_prompt,
        num_maps_per_mask=params.mask_samples,
        mask_encode_strength=params.mask_strength,
        mask_thresholding_ratio=params.mask_clamp,
        num_inference_steps=STEPS,
        guidance_scale=params.mask_guidance,
        generator=generators(1)[0],
    )
    assert torch.equal(ours, torch.from_numpy(theirs).float())
    assert 0 < ours.sum() < ours.numel()
    # No cell sits within float noise of the threshold, so the comparison is not luck.
    normalised = torch.minimum(maps, maps.mean() * params.mask_clamp) / (maps.mean() * params.mask_clamp)
    assert ((normalised - params.mask_threshold).abs() > 1e-4).all()
