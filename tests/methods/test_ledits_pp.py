"""LEDITS++ on the tiny backbone, against diffusers' `LEditsPPPipelineStableDiffusion`."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LEditsPPPipelineStableDiffusion, UNet2DConditionModel
from PIL import Image

from editsweep.datasets.base import Sample
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.ledits import mask_level, sample_concepts
from editsweep.methods.ledits_pp import LeditsEditParams, LeditsInvertParams, LeditsPP

STEPS = 6  # int(6 * 1.15) = 6: nothing skipped, and the first timestep (831) is above 800 (M1 alone)
CONCEPTS = ("a dog", "cat")


@pytest.fixture(scope="module")
def deep_backbone(tiny_backbone):
    """The tiny backbone with a three-level UNet (cross-attention at every level, seeded, conv_out
    scaled as the tiny one's): the pipeline takes M1 from the maps at 1/4 of the latent side, a
    level the two-level tiny UNet does not have."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
    ).eval().requires_grad_(False)
    unet.conv_out.weight.mul_(0.1)
    unet.conv_out.bias.mul_(0.1)
    return dataclasses.replace(tiny_backbone, unet=unet)


class IntegerTimesteps(DDIMScheduler):
    """The pipeline's `invert` adds noise at `torch.Tensor([t])`, a float index that DDIMScheduler
    0.42 refuses: the timestep as an integer, the same noise level."""

    def add_noise(self, original_samples, noise, timesteps):
        return super().add_noise(original_samples, noise, timesteps.long())


def pipeline(backbone):
    pipe = LEditsPPPipelineStableDiffusion(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        scheduler=IntegerTimesteps.from_config(backbone.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    encode = pipe.encode_prompt

    def concept_token_counts(**kwargs):  # the concept's own tokens (the pipeline counts the padding)
        concepts, uncond, counts = encode(**kwargs)
        if counts is not None:
            counts = torch.tensor([len(backbone.tokenizer(c).input_ids) - 2 for c in kwargs["editing_prompt"]])
        return concepts, uncond, counts

    pipe.encode_prompt = concept_token_counts
    return pipe


def test_equals_the_diffusers_pipeline(deep_backbone, generated_samples, generators):
    """Two concepts (one removed) with their own scales, warm-ups and thresholds under the
    intersected masks (M1 at the 2x2 level), and zero edit guidance, against the pipeline on the same
    weights, image and seed: within 1e-4 in pixels (measured 8e-6; a threshold of 0.8 instead of 0.9
    moves the image by 0.02, the pipeline's padded token count by 0.09). The pinned difference
    (methods/ledits_pp.py): the pipeline gets the concepts' own token counts. Zero edit guidance
    reconstructs the input: the VAE round trip within 1e-4."""
    backbone, sample = deep_backbone, generated_samples[0]
    params = LeditsInvertParams(steps=STEPS)
    edit = LeditsEditParams(
        editing_prompt=CONCEPTS,
        reverse_editing_direction=(False, True),
        edit_guidance_scale=(6.0, 4.0),
        edit_warmup_steps=(0, 1),
        edit_threshold=(0.9, 0.7),
    )
    zero = LeditsEditParams(editing_prompt=CONCEPTS, edit_guidance_scale=0.0)
    method = LeditsPP()
    state = method.invert(backbone, [sample], params, generators(1))
    ours, reconstruction = method.edit(backbone, state, [sample], params, [edit, zero], generators(1))

    pipe = pipeline(backbone)
    pipe.invert(image=sample.image, num_inversion_steps=STEPS, skip=params.skip, generator=generators(1)[0])
    assert torch.allclose(pipe.init_latents, state["start"], atol=1e-4)
    reference = pipe(
        editing_prompt=list(CONCEPTS),
        reverse_editing_direction=[False, True],
        edit_guidance_scale=[6.0, 4.0],
        edit_warmup_steps=[0, 1],
        edit_threshold=[0.9, 0.7],
        output_type="pt",
    ).images
    unedited = pipe(output_type="pt").images
    assert (ours - reference).abs().max() < 1e-4
    assert (reconstruction - unedited).abs().max() < 1e-4
    round_trip = backbone.decode(backbone.encode_images(images_tensor([sample], backbone.device)))
    assert (reconstruction - round_trip).abs().max() < 1e-4
    assert (ours - reconstruction).abs().mean() > 1e-3  # the concepts act


def test_the_schedule_keeps_the_pipelines_steps(tiny_backbone):
    """int(steps * (1 + skip)) steps, the first ones skipped, as the pipeline's `invert`."""
    params = LeditsInvertParams(steps=30, skip=0.15)
    scheduler = DDIMScheduler.from_config(tiny_backbone.scheduler.config)
    scheduler.set_timesteps(int(30 * 1.15))
    schedule = params.schedule(tiny_backbone)
    assert torch.equal(schedule.timesteps, scheduler.timesteps[-30:].long())
    assert torch.equal(schedule.alphas, make_schedule(tiny_backbone, 34).alphas[4:])


def test_a_batch_equals_each_sample_alone(tiny_backbone, generated_samples, generators):
    """The sample's concepts (its changed words, the source's removed), maps at tiny's only level."""
    targets = ["a photo of a dog", "a blue car on a road"]
    samples = [Sample(s.id, s.image, t, s.source_prompt) for s, t in zip(generated_samples[:2], targets, strict=True)]
    method, params, points = LeditsPP(), LeditsInvertParams(steps=4), [LeditsEditParams(edit_guidance_scale=8.0)]
    state = method.invert(tiny_backbone, samples, params, generators(2))
    (batch,) = method.edit(tiny_backbone, state, samples, params, points, generators(2))
    for b, sample in enumerate(samples):
        alone_state = method.invert(tiny_backbone, [sample], params, generators(1, seed=b))
        (alone,) = method.edit(tiny_backbone, alone_state, [sample], params, points, generators(1, seed=b))
        assert torch.allclose(alone[0], batch[b], atol=1e-4)


def test_sample_concepts_are_the_changed_words():
    image = None
    blended = Sample("a", image, "a red car", "a blue car", {"blended_words": ["blue", "red"]})
    assert sample_concepts(blended) == ("red", "blue")
    assert sample_concepts(Sample("b", image, "a photo of a dog", "a photo of a cat")) == ("dog", "cat")
    assert sample_concepts(Sample("c", image, "a cat wearing a hat", "a cat")) == ("wearing a hat", None)
    assert sample_concepts(Sample("d", image, "a cat", None)) == ("a cat", None)


def test_per_concept_values_must_match_the_concepts():
    with pytest.raises(ValueError, match="edit_threshold"):
        LeditsEditParams(editing_prompt=("a", "b", "c"), edit_threshold=(0.9, 0.8))
    with pytest.raises(ValueError, match="edit_guidance_scale"):
        LeditsEditParams(edit_guidance_scale=-1.0)


def test_concepts_from_prompts_adds_the_target_prompt_and_removes_the_source_prompt(
    tiny_backbone, generated_samples, generators
):
    """`concepts_from: prompts` is the same edit as the two captions given as concepts; at its
    defaults neither added field enters the dump (so the task key)."""
    sample = Sample("s", generated_samples[0].image, "a blue car on a road", "a red car on a road")
    prompts = LeditsEditParams(concepts_from="prompts")
    assert prompts.concepts(sample) == [("a blue car on a road", False, 0), ("a red car on a road", True, 1)]
    assert prompts.concepts(Sample("t", None, "a cat", None)) == [("a cat", False, 0)]
    assert not {"concepts_from", "m1_resolution"} & set(LeditsEditParams().model_dump(mode="json"))
    assert prompts.model_dump(mode="json")["concepts_from"] == "prompts"
    captions = (sample.target_prompt, sample.source_prompt)
    given = LeditsEditParams(editing_prompt=captions, reverse_editing_direction=(False, True))
    method, params = LeditsPP(), LeditsInvertParams(steps=4)
    state = method.invert(tiny_backbone, [sample], params, generators(1))
    ours, reference = method.edit(tiny_backbone, state, [sample], params, [prompts, given], generators(1))
    assert torch.equal(ours, reference)


def test_m1_resolution_picks_the_level_and_points_may_differ_in_one_call(deep_backbone, generated_samples, generators):
    """The share of the latent side M1's maps are at picks the UNet level (the three-level UNet has
    maps at 8, 4 and 2 of its 8x8 latent); two points with different shares in one call (maps
    recorded at both levels) equal each alone, and the share acts."""
    assert [mask_level(deep_backbone.unet, 8, r) for r in (0.25, 0.5, 1.0)] == [2, 1, 0]
    assert mask_level(deep_backbone.unet, 8, 0.1) == 2  # none that fine: the coarsest
    sample, method, params = generated_samples[0], LeditsPP(), LeditsInvertParams(steps=STEPS)
    points = [LeditsEditParams(editing_prompt=CONCEPTS, m1_resolution=r) for r in (0.25, 1.0)]
    state = method.invert(deep_backbone, [sample], params, generators(1))
    together = method.edit(deep_backbone, state, [sample], params, points, generators(1))
    for point, image in zip(points, together, strict=True):
        (alone,) = method.edit(deep_backbone, state, [sample], params, [point], generators(1))
        assert torch.allclose(alone, image, atol=1e-5)
    assert (together[0] - together[1]).abs().max() > 1e-3


def test_a_non_square_image_gets_non_square_maps(tiny_backbone, generators):
    """A 64x96 image (an 8x12 latent): M1's maps keep the latent's aspect."""
    image = Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8))
    sample, method, params = Sample("w", image, "a blue car", "a red car"), LeditsPP(), LeditsInvertParams(steps=3)
    state = method.invert(tiny_backbone, [sample], params, generators(1))
    (edited,) = method.edit(tiny_backbone, state, [sample], params, [LeditsEditParams()], generators(1))
    assert edited.shape == (1, 3, 64, 96) and torch.isfinite(edited).all()
