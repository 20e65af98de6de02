"""CycleDiffusion's latent code of a stochastic DDIM sampler (Wu and De la Torre 2023, "A Latent
Space of Stochastic Diffusion Models for Zero-Shot Image Editing and Guidance").

The latent code of an image x_0 is z = (x_T, z_T, ..., z_1): x_T ~ q(x_T | x_0), then x_{t-1} ~
q(x_{t-1} | x_t, x_0) along one posterior chain, and each z_t the noise that the DDIM step with eta
(guided by the source prompt) needs to go from x_t to x_{t-1}; the final step lands on x_0 itself.
Sampling from the same code with the target prompt edits. After diffusers' `CycleDiffusionPipeline`
(`pipelines/deprecated/stable_diffusion_variants/pipeline_cycle_diffusion.py`: `posterior_sample`,
`compute_noise`, whose step is `DDIMScheduler.step` with `variance_noise`) and the paper's code
(`ChenWu98/cycle-diffusion`). Noise maps are the edit-friendly DDPM ones' (diffusion/ddpm_inversion.py)
on another chain: one posterior chain instead of independent draws, and DDIM's sigma_t^2 = eta^2 var_t.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, predict_noise
from editsweep.diffusion.ddpm_inversion import ddim_mean, posterior_variance


def cycle_step(
    x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor, alpha_from: float, alpha_to: float, eta: float
) -> torch.Tensor:
    """One DDIM step with eta and a given noise z: `DDIMScheduler.step(..., eta, variance_noise=z)`."""
    sigma = eta * posterior_variance(alpha_from, alpha_to) ** 0.5
    return ddim_mean(x, eps, alpha_from, alpha_to, sigma**2) + sigma * z


@torch.no_grad()
def cycle_encode(
    backbone: Backbone,
    latents: torch.Tensor,
    schedule: Schedule,
    start: int,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    guidance: float,
    eta: float,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent code of clean `latents` from sampling step `start` on: x at `timesteps[start]`
    (B, ...) and the noise maps (steps - start, B, ...), [i] for step start + i.

    Noise is drawn per sample on its CPU generator in the reference's order (x_T's, then one per
    step but the last), so a sample's code does not depend on its batch.
    """
    x0 = latents.float()
    n = schedule.steps
    draws = [[torch.randn(x0.shape[1:], generator=g) for _ in range(n - start)] for g in generators]
    noise = torch.stack([torch.stack(d) for d in draws], dim=1).to(x0.device)  # (steps - start, B, ...)
    a = schedule.alphas[start].item()
    x = a**0.5 * x0 + (1 - a) ** 0.5 * noise[0]
    start_x = x
    maps = torch.zeros(n - start, *x0.shape, device=x0.device)
    for k, i in enumerate(range(start, n)):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, guidance, alpha=a_from)
        sigma = eta * posterior_variance(a_from, a_to) ** 0.5
        if i == n - 1:  # the reference's posterior sample of the last step is x_0 itself
            previous = x0
        else:  # x_{t-1} ~ q(x_{t-1} | x_t, x_0) with DDIM's eta
            direction = (x - a_from**0.5 * x0) / (1 - a_from) ** 0.5
            previous = a_to**0.5 * x0 + max(1 - a_to - sigma**2, 0.0) ** 0.5 * direction + sigma * noise[k + 1]
        maps[k] = (previous - ddim_mean(x, eps, a_from, a_to, sigma**2)) / sigma
        x = previous
    return start_x, maps
