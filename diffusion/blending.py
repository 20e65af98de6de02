"""Mask-guided sampling (DiffEdit, Blended Latent Diffusion): the edit runs inside a mask, the
latents outside it are replaced after every step by a latent of the input at that noise level."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def blend_outside(
    mask: torch.Tensor, background: Callable[[int], torch.Tensor]
) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """An `after_step` for `ddim_sample`: inside `mask` (R, h, w; 1 = edit) the step's latents,
    outside it `background(i)` (R, C, h, w), the input's latent at the level step i reaches."""
    inside = mask[:, None].float()

    def blend(i: int, x: torch.Tensor) -> torch.Tensor:
        return inside * x + (1 - inside) * background(i).to(x)

    return blend


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, h, w) 0/1 latent mask at the pixel `size`, each cell covering its pixels (nearest)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0]
