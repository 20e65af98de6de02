"""CycleDiffusion on the tiny backbone, against diffusers' `CycleDiffusionPipeline`."""

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.deprecated import CycleDiffusionPipeline

from editsweep.datasets.base import Sample
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.cycle_diffusion import CycleDiffusion, CycleEditParams, CycleInvertParams

PARAMS = CycleInvertParams(steps=6, strength=0.8, eta=0.1, source_guidance=1.5)
TARGETS = ["a photo of a dog", "a blue car on a road", "a bowl of flowers"]


def edited(samples):
    return [Sample(s.id, s.image, t, s.source_prompt) for s, t in zip(samples, TARGETS[: len(samples)], strict=True)]


def run(backbone, samples, params, points, generators):
    method = CycleDiffusion()
    state = method.invert(backbone, samples, params, generators)
    return method.edit(backbone, state, samples, params, points, generators)


def test_equals_the_diffusers_pipeline(tiny_backbone, generated_samples, generators):
    """Same weights, latents, seeds and settings: the pipeline (one sample per call, its guided path
    takes one) and a batch of two samples at two target scales agree within 1e-4 in pixels
    (measured 6e-6; another seed moves the image by 0.11). The input goes to the pipeline as
    latents, since it would sample the VAE posterior where editsweep takes its mean; source
    guidance 1.5 exercises the source prompt's CFG, which the pipeline applies when the target's
    scale is above 1."""
    backbone, samples = tiny_backbone, edited(generated_samples[:2])
    points = [CycleEditParams(guidance=3.0), CycleEditParams(guidance=7.5)]
    ours = run(backbone, samples, PARAMS, points, generators(2))
    pipe = CycleDiffusionPipeline(
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
    latents = backbone.encode_images(images_tensor(samples, backbone.device))
    for k, point in enumerate(points):
        for b, sample in enumerate(samples):
            reference = pipe(
                prompt=sample.target_prompt,
                source_prompt=sample.source_prompt,
                image=latents[b : b + 1],
                strength=PARAMS.strength,
                num_inference_steps=PARAMS.steps,
                guidance_scale=point.guidance,
                source_guidance_scale=PARAMS.source_guidance,
                eta=PARAMS.eta,
                generator=generators(1, seed=b)[0],
                output_type="pt",
            ).images
            assert (ours[k][b] - reference[0]).abs().max() < 1e-4, (k, b)
    assert (ours[0] - ours[1]).abs().mean() > 1e-3  # the target scale matters


def test_the_source_prompt_reconstructs_the_input(tiny_backbone, generated_samples, generators):
    """Target = source prompt at the source's scale: the code decodes back to the input's latent
    (the final step lands on it by construction), so to the VAE round trip: within 1e-4 in pixels
    (measured 6e-6)."""
    backbone, samples = tiny_backbone, generated_samples[:2]
    (image,) = run(backbone, samples, PARAMS, [CycleEditParams(guidance=PARAMS.source_guidance)], generators(2))
    round_trip = backbone.decode(backbone.encode_images(images_tensor(samples, backbone.device)))
    assert (image - round_trip).abs().max() < 1e-4


def test_a_batch_equals_each_sample_alone(tiny_backbone, generated_samples, generators):
    samples = edited(generated_samples[1:])
    points = [CycleEditParams(guidance=4.0)]
    (batch,) = run(tiny_backbone, samples, PARAMS, points, generators(2))
    for b, sample in enumerate(samples):
        (alone,) = run(tiny_backbone, [sample], PARAMS, points, generators(1, seed=b))
        assert torch.allclose(alone[0], batch[b], atol=1e-4)


def test_a_strength_that_leaves_no_step_is_refused():
    with pytest.raises(ValueError, match="no step"):
        CycleInvertParams(steps=10, strength=0.05)
