import torch

from editsweep.diffusion.ddim import ddim_invert, ddim_move, ddim_sample, make_schedule
from editsweep.diffusion.inputs import images_tensor


def relative_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b) ** 2).mean().item() / b.var().item()


def test_ddim_move_is_its_own_inverse():
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    there = ddim_move(x, eps, 0.9, 0.2)
    assert torch.allclose(ddim_move(there, eps, 0.2, 0.9), x, atol=1e-5)


def test_schedule_matches_the_scheduler(tiny_backbone):
    schedule = make_schedule(tiny_backbone, 10)
    assert schedule.timesteps.tolist() == list(range(901, 0, -100))
    assert schedule.alphas[-1] == tiny_backbone.scheduler.alphas_cumprod[0].double()
    assert bool((schedule.alphas[1:] > schedule.alphas[:-1]).all())


def test_inversion_without_guidance_reconstructs(tiny_backbone, generated_samples):
    """DDIM inversion + sampling at guidance 1 returns the latent: relative MSE below 1e-2.

    Measured 2.7e-3 at 10 steps on the tiny backbone; an unconditioned random UNet gives > 1.
    """
    latents = tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device))
    cond = tiny_backbone.encode_text([s.source_prompt for s in generated_samples])
    schedule = make_schedule(tiny_backbone, 10)
    trajectory = ddim_invert(tiny_backbone, latents, schedule, cond)
    assert trajectory.shape == (11, 3, 4, 8, 8)
    assert torch.equal(trajectory[0], latents.float())
    assert relative_mse(trajectory[-1], latents) > 0.5  # the end of the trajectory is far from the input
    reconstruction = ddim_sample(tiny_backbone, trajectory[-1], schedule, cond)
    assert relative_mse(reconstruction, latents) < 1e-2


def test_guidance_breaks_plain_ddim_reconstruction(tiny_backbone, generated_samples):
    """Under guidance 7.5 plain DDIM drifts: the gap that Null-text inversion closes."""
    latents = tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device))
    cond = tiny_backbone.encode_text([s.source_prompt for s in generated_samples])
    uncond = tiny_backbone.encode_text([""] * 3)
    schedule = make_schedule(tiny_backbone, 10)
    noise = ddim_invert(tiny_backbone, latents, schedule, cond)[-1]
    plain = relative_mse(ddim_sample(tiny_backbone, noise, schedule, cond), latents)
    guided = relative_mse(ddim_sample(tiny_backbone, noise, schedule, cond, uncond, 7.5), latents)
    assert guided > 3 * plain


def test_per_row_guidance_equals_separate_calls(tiny_backbone):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = tiny_backbone.encode_text(["a cat", "a dog"])
    uncond = tiny_backbone.encode_text(["", ""])
    schedule = make_schedule(tiny_backbone, 5)
    both = ddim_sample(tiny_backbone, noise, schedule, cond, uncond, torch.tensor([1.0, 7.5]))
    first = ddim_sample(tiny_backbone, noise[:1], schedule, cond[:1], uncond[:1], 1.0)
    second = ddim_sample(tiny_backbone, noise[1:], schedule, cond[1:], uncond[1:], 7.5)
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-4)


def test_inversion_equals_diffusers_inverse_scheduler(tiny_backbone, generated_samples):
    """`ddim_invert` against diffusers' `DDIMInverseScheduler` stepped by hand with the same UNet:
    each step evaluates the noise at the next (noisier) timestep and moves between the same
    alpha-bars (the first from the final alpha-bar), so every latent of the trajectory agrees."""
    from diffusers import DDIMInverseScheduler

    latents = tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device))
    cond = tiny_backbone.encode_text([s.source_prompt for s in generated_samples])
    trajectory = ddim_invert(tiny_backbone, latents, make_schedule(tiny_backbone, 10), cond)
    inverse = DDIMInverseScheduler.from_config(tiny_backbone.scheduler.config)
    inverse.set_timesteps(10)
    x, reference = latents.float(), [latents.float()]
    with torch.no_grad():
        for t in inverse.timesteps:
            eps = tiny_backbone.unet(x, t, encoder_hidden_states=cond).sample
            x = inverse.step(eps, t, x).prev_sample
            reference.append(x)
    assert inverse.timesteps.tolist() == list(range(1, 902, 100))
    assert torch.allclose(trajectory, torch.stack(reference), atol=1e-5), (trajectory - torch.stack(reference)).abs().max()
