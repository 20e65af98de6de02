"""Edit-friendly DDPM noise space (Huberman-Spiegelglas et al. 2024, "An Edit Friendly DDPM Noise
Space: Inversion and Manipulations"): an inversion of a DDPM sampler whose per-step noise maps
make the sampler retrace the input exactly.

After the reference code (`inbarhub/DDPM_inversion`, `inversion_forward_process` and
`reverse_step`): the noisy latents x_1..x_T are drawn independently from q(x_t | x_0) (not along
one trajectory, which is what makes the noise maps "edit friendly"), then for each step the noise
map z_t = (x_{t-1} - mu_t(x_t)) / sigma_t that the DDPM step from x_t needs to land on x_{t-1}
is solved for, with mu_t the guided prediction at the source prompt; sigma_t = eta * sqrt(var_t),
var_t the DDPM posterior variance between the step's noise levels. Sampling with those maps
(under a target prompt, an editor's control) edits. As the reference, the final step's noise map
is zero (the last step is deterministic), so sampling with the source prompt reproduces every
latent down to x_1 exactly and x_0 up to that step's prediction error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, predict_noise


def posterior_variance(alpha_from: float, alpha_to: float) -> float:
    """DDPM's posterior variance from alpha-bar `alpha_from` to the less noisy `alpha_to`."""
    return (1 - alpha_to) / (1 - alpha_from) * (1 - alpha_from / alpha_to)


def ddim_mean(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float, removed: float) -> torch.Tensor:
    """The mean of a DDIM step with `removed` variance taken out of its direction:
    sqrt(alpha_to) * x0_pred + sqrt(1 - alpha_to - removed) * eps (DDIM's eq. 12; `DDIMScheduler.step`
    removes sigma_t^2 = eta^2 * var_t)."""
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + max(1 - alpha_to - removed, 0.0) ** 0.5 * eps


def ddpm_mean(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float, eta: float) -> torch.Tensor:
    """mu_t: the DDIM-style mean of the step; as the reference code, eta * var_t (not eta^2 * var_t)
    is taken out of the direction (the same at its eta 1)."""
    return ddim_mean(x, eps, alpha_from, alpha_to, eta * posterior_variance(alpha_from, alpha_to))


def ddpm_step(
    x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor, alpha_from: float, alpha_to: float, eta: float
) -> torch.Tensor:
    """One DDPM step with a given noise map z: mu_t + eta * sqrt(var_t) * z."""
    sigma = eta * posterior_variance(alpha_from, alpha_to) ** 0.5
    return ddpm_mean(x, eps, alpha_from, alpha_to, eta) + sigma * z


@torch.no_grad()
def ddpm_invert(
    backbone: Backbone,
    latents: torch.Tensor,
    schedule: Schedule,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: float,
    eta: float,
    generators: Sequence[torch.Generator],
    solve_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noisy latents (steps + 1, B, ...) with [0] = x_0 and [k] at `schedule.timesteps[steps - k]`,
    and the noise maps (steps, B, ...) with [i] for sampling step i (from the noisiest).

    `solve_last` solves the final step's map too, as LEDITS++'s inversion (diffusers'
    `LEditsPPPipelineStableDiffusion.invert`), so that sampling lands on x_0 exactly."""
    n = schedule.steps
    x0 = latents.float()
    noise = torch.stack(
        [torch.randn(n, *x0.shape[1:], generator=g) for g in generators], dim=1
    ).to(x0.device)  # (steps, B, ...): one CPU generator per sample, so batches do not change it
    xts = [x0]
    for k in range(1, n + 1):
        a = schedule.alphas[n - k].item()
        xts.append(a**0.5 * x0 + (1 - a) ** 0.5 * noise[k - 1])
    xts = torch.stack(xts)
    zs = torch.zeros(n, *x0.shape, device=x0.device)
    for i in range(n):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        x = xts[n - i]
        eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, guidance, alpha=a_from)
        sigma = eta * posterior_variance(a_from, a_to) ** 0.5
        if (i == n - 1 and not solve_last) or sigma == 0:  # the reference zeroes the final step's map
            continue
        mu = ddpm_mean(x, eps, a_from, a_to, eta)
        zs[i] = (xts[n - i - 1] - mu) / sigma
        xts[n - i - 1] = mu + sigma * zs[i]
    return xts, zs
