"""Denoising Diffusion Consistent Model sampling (DDCM, Xu et al. 2024, "Inversion-Free Image
Editing with Natural Language"): DDIM whose variance schedule is the largest one,
sigma_t^2 = 1 - alpha-bar_{t-1}, so that a step forgets the direction term and re-noises the
predicted clean latent with fresh noise, the form of multi-step consistency sampling.

When the clean source latent x0 is known, the source branch needs no inversion ("virtual
inversion"): at every step it sits at sqrt(a) x0 + sqrt(1 - a) z for the step's fresh noise z, so
its noise is known in closed form, and a target branch predicts its clean latent as x0 plus the
difference of the two branches' latents corrected by the difference of their noise predictions:
the source's own prediction error cancels (reference code `sled-group/InfEdit`, `ddcm_sampler` of
`pipeline_ead.py`, at its eta 1). We write the step here because no diffusers scheduler takes a
second branch's latent and noise.
"""

from __future__ import annotations

import torch


def ddcm_clean(
    x: torch.Tensor,
    eps: torch.Tensor,
    x_source: torch.Tensor,
    eps_source: torch.Tensor,
    clean: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """A branch's predicted clean latent at a step of noise level `alpha` (alpha-bar), given the
    source branch's latent and noise prediction there and the known clean source latent."""
    return clean + ((x - x_source) - (1 - alpha) ** 0.5 * (eps - eps_source)) / alpha**0.5


def ddcm_noised(clean: torch.Tensor, noise: torch.Tensor, alpha: float) -> torch.Tensor:
    """A clean latent re-noised to level `alpha` with fresh noise: the DDCM step's result (and the
    source branch's latent, with its known clean latent)."""
    return alpha**0.5 * clean + (1 - alpha) ** 0.5 * noise
