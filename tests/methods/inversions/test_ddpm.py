"""Edit-friendly DDPM inversion on the tiny backbone: its noise maps retrace the input."""

import pytest
import torch

from editsweep.diffusion.ddim import make_schedule, predict_noise
from editsweep.diffusion.ddpm_inversion import ddpm_invert, ddpm_step
from editsweep.diffusion.inputs import images_tensor, source_prompts
from editsweep.methods.inversions.ddpm import DDPMInversion, DDPMInversionParams

STEPS = 8


def test_sampling_with_the_noise_maps_retraces_every_latent(tiny_backbone, generated_samples, generators):
    backbone, samples = tiny_backbone, generated_samples
    latents = backbone.encode_images(images_tensor(samples, backbone.device))
    cond, uncond = backbone.encode_text(source_prompts(samples)), backbone.encode_text([""] * 3)
    schedule = make_schedule(backbone, STEPS)
    xts, zs = ddpm_invert(backbone, latents, schedule, cond, uncond, 3.5, 1.0, generators(3))
    assert torch.equal(xts[0], latents.float()) and zs[-1].eq(0).all() and zs[:-1].abs().sum() > 0
    x = xts[STEPS]
    for i in range(STEPS):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, 3.5, alpha=a_from)
        x = ddpm_step(x, eps, zs[i], a_from, a_to, 1.0)
        if i < STEPS - 1:  # every latent down to x_1 exactly
            assert torch.allclose(x, xts[STEPS - i - 1], atol=1e-4), f"step {i}"
    # The final step is deterministic (the reference zeroes its map): x_0 up to that step's error.
    assert ((x - latents) ** 2).mean() < 0.05 * latents.var()


def test_inverting_a_batch_equals_each_sample_alone(tiny_backbone, generated_samples, generators):
    inversion, params = DDPMInversion(), DDPMInversionParams(steps=STEPS, skip=2)
    batch = inversion.invert(tiny_backbone, generated_samples, params, generators(3))
    assert batch["noise_maps"].shape == (STEPS - 2, 3, 4, 8, 8)
    for i, sample in enumerate(generated_samples):
        alone = inversion.invert(tiny_backbone, [sample], params, generators(1, seed=i))
        assert torch.allclose(alone["start"], batch["start"][i : i + 1], atol=1e-5)
        assert torch.allclose(alone["noise_maps"], batch["noise_maps"][:, i : i + 1], atol=1e-3)


def test_skip_must_leave_a_step():
    with pytest.raises(ValueError, match="skip"):
        DDPMInversionParams(steps=10, skip=10)
