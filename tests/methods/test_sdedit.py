import pytest
import torch

from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import Params, get_method_class
from editsweep.methods.sdedit import SDEditParams


@pytest.fixture(scope="module")
def method():
    return get_method_class("sdedit")()


def test_strength_controls_distance_from_input(tiny_backbone, generated_samples, method, generators):
    samples = [s.__class__(s.id, s.image, "a blue bird in the sky") for s in generated_samples]
    state = method.invert(tiny_backbone, samples, Params(), generators(3))
    points = [SDEditParams(strength=s, steps=10) for s in (0.1, 0.5, 1.0)]
    outputs = method.edit(tiny_backbone, state, samples, Params(), points, generators(3))
    reference = tiny_backbone.decode(state["latents"])
    distances = [(o - reference).abs().mean().item() for o in outputs]
    assert distances[0] < distances[1] < distances[2]


def test_same_noise_for_every_point_and_independent_of_grouping(tiny_backbone, generated_samples, method, generators):
    state = method.invert(tiny_backbone, generated_samples, Params(), generators(3))
    points = [SDEditParams(strength=0.5, steps=10, guidance=g) for g in (3.0, 7.5)] + [
        SDEditParams(strength=0.8, steps=5)
    ]
    together = method.edit(tiny_backbone, state, generated_samples, Params(), points, generators(3))
    for point, batched in zip(points, together):
        (alone,) = method.edit(tiny_backbone, state, generated_samples, Params(), [point], generators(3))
        assert torch.allclose(batched, alone, atol=1e-4)
    other_seed = method.edit(tiny_backbone, state, generated_samples, Params(), points[:1], generators(3, seed=9))
    assert not torch.allclose(other_seed[0], together[0], atol=1e-3)


def test_input_is_the_encoded_image(tiny_backbone, generated_samples, method, generators):
    state = method.invert(tiny_backbone, generated_samples, Params(), generators(3))
    expected = tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device))
    assert torch.equal(state["latents"], expected)


def test_on_sdxl_equals_the_diffusers_img2img_pipeline(generated_samples, generators):
    """`sdedit` on tiny-sdxl against `StableDiffusionXLImg2ImgPipeline` with DDIM, started from the
    same noised latent (the pipeline's `latents`, so its VAE sampling and noise draw are bypassed):
    strength 0.5 of 6 steps, where the pipeline's int() and our round() pick the same start step."""
    from diffusers import DDIMScheduler, StableDiffusionXLImg2ImgPipeline

    from editsweep.diffusion.backbone import load_backbone
    from editsweep.diffusion.ddim import make_schedule
    from editsweep.diffusion.inputs import target_prompts

    sdxl = load_backbone("tiny-sdxl")
    samples = generated_samples[:2]
    method = get_method_class("sdedit")()
    params = method.EditParams(strength=0.5, steps=6, guidance=7.5)
    state = method.invert(sdxl, samples, Params(), generators(2))
    ours = method.edit(sdxl, state, samples, Params(), [params], generators(2))[0]
    noise = torch.stack([torch.randn(state["latents"].shape[1:], generator=g) for g in generators(2)])
    alpha = make_schedule(sdxl, 6).alphas[3].item()
    noisy = alpha**0.5 * state["latents"] + (1 - alpha) ** 0.5 * noise
    components = {k: v for k, v in sdxl.pipe.components.items() if k != "scheduler"}
    pipe = StableDiffusionXLImg2ImgPipeline(
        **components, scheduler=DDIMScheduler.from_config(sdxl.scheduler.config), requires_aesthetics_score=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        target_prompts(samples), image=images_tensor(samples, sdxl.device), strength=0.5, num_inference_steps=6,
        guidance_scale=7.5, latents=noisy, output_type="pt",
    ).images
    # Measured: 6.5e-6 in [0, 1] pixels.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
