"""Mask-guided sampling (DiffEdit, Blended Latent Diffusion): the edit runs inside a mask, the
latents outside it are replaced after every step by a latent of the input at that noise level.

Blended Latent Diffusion's two refinements (Avrahami et al. 2023, Sec. 4.2-4.3; reference code
`omriav/blended-latent-diffusion`, `ldm/image_editor.py`, `ldm/models/diffusion/ddim.py`,
`ldm/image_reconstruction.py`) live here too: progressive mask shrinking (`shrinking_masks`,
`mask_schedule`) and background reconstruction by per-image decoder fine-tuning (`tune_decoder`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.func import functional_call


def blend_outside(
    mask: torch.Tensor | Callable[[int], torch.Tensor], background: Callable[[int], torch.Tensor]
) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """An `after_step` for `ddim_sample`: inside `mask` (R, h, w; 1 = edit; or `mask(i)`, the mask
    after step i) the step's latents, outside it `background(i)` (R, C, h, w), the input's latent at
    the level step i reaches."""
    fixed = None if callable(mask) else mask[:, None].float()

    def blend(i: int, x: torch.Tensor) -> torch.Tensor:
        inside = fixed if fixed is not None else mask(i)[:, None].float()
        return inside * x + (1 - inside) * background(i).to(x)

    return blend


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, h, w) 0/1 latent mask at the pixel `size`, each cell covering its pixels (nearest)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0]


def shrinking_masks(mask: torch.Tensor, dilations: int) -> torch.Tensor:
    """(dilations + 1, B, h, w): the 0/1 latent `mask` (B, h, w) dilated by square kernels of sides
    3 + 2 (dilations - 1), ..., 5, 3, then the mask itself, as the reference's `read_mask`
    (`scipy.ndimage.binary_dilation` with a square of ones, here a max-pool, which is the same
    operation on a 0/1 mask with zeros beyond the border)."""
    x = mask[:, None].float()
    sides = [3 + 2 * k for k in reversed(range(dilations))]
    grown = [F.max_pool2d(x, side, stride=1, padding=side // 2)[:, 0] for side in sides]
    return torch.stack([*grown, mask.float()])


def mask_schedule(steps: int, n_masks: int) -> list[int]:
    """The index into `shrinking_masks` of the mask applied after each of `steps` denoising steps.

    The reference splits the steps it runs into intervals of `steps // n_masks + 1` and blends
    before step j with mask j // interval; blending after step j (our loop, diffusion/ddim.py) is
    its blend before step j + 1. The last step always takes the real mask (where the reference, for
    n_masks close to steps, may end on a dilated one), so the final latent outside the real mask is
    the input's, as without shrinking. Non-decreasing: the masks only shrink.
    """
    if steps < 1 or n_masks < 1:
        raise ValueError(f"mask_schedule needs steps >= 1 and n_masks >= 1, got {steps} and {n_masks}")
    interval = steps // n_masks + 1
    return [(j + 1) // interval for j in range(steps - 1)] + [n_masks - 1]


def tune_decoder(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    initial: torch.Tensor,
    inputs: torch.Tensor,
    mask: torch.Tensor,
    steps: int = 75,
    lr: float = 1e-4,
    preservation: float = 100.0,
) -> torch.Tensor:
    """Background reconstruction (Blended Latent Diffusion Sec. 4.2): per image, fine-tune a copy of
    the VAE decoder so that decoding the edit's `latents` (B, C, h, w; scaled) gives the input
    `inputs` (B, 3, H, W in [0, 1]) outside `mask` (B, H, W; 1 = edit) and the `initial` decoding
    (B, 3, H, W in [0, 1]) inside it; returns the tuned decodings (B, 3, H, W in [0, 1]).

    As the reference's `reconstruct_image_by_optimization` (weights mode): Adam on the decoder's
    weights (not `post_quant_conv`), the loss MSE(D(z) m, x_edit m) + preservation *
    MSE(D(z) (1 - m), x (1 - m)) in [-1, 1] space, 75 steps at lr 1e-4. Each image has its own
    float32 copy of the decoder's weights (the VAE itself is untouched); the copies are stacked and
    run through `torch.vmap` over `functional_call`, so a step is one batched forward and backward,
    and the summed loss gives each copy exactly its own image's gradient. Memory: B copies of the
    decoder's weights and Adam's two moments.
    """
    decoder = vae.decoder
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    with torch.no_grad():
        hidden = vae.post_quant_conv(z) if vae.post_quant_conv is not None else z
    hidden = hidden.float()[:, None]  # (B, 1, C, h, w): one image per vmapped call
    batch = len(latents)
    weights = {
        name: p.detach().float()[None].repeat(batch, *[1] * p.ndim).requires_grad_(True)
        for name, p in decoder.named_parameters()
    }
    buffers = {name: b.float() if b.is_floating_point() else b for name, b in decoder.named_buffers()}
    inside = mask.float()[:, None]
    fg, bg = initial.float() * 2 - 1, inputs.float() * 2 - 1
    fg, bg = fg * inside, bg * (1 - inside)

    def decode_one(w: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        return functional_call(decoder, {**w, **buffers}, (h,))[0]

    decode_all = torch.vmap(decode_one)
    optimiser = torch.optim.Adam(weights.values(), lr=lr)
    with torch.enable_grad(), warnings.catch_warnings():
        # torch has no vmap batching rule for the CPU kernel of scaled_dot_product_attention (the
        # VAE's mid-block attention) and loops over the images for that one op: still faster than
        # a Python loop over images (measured on the tiny VAE, 4 images: 2.9-3.6 s against 4.2-4.7 s)
        warnings.filterwarnings("ignore", message="There is a performance drop")
        for _ in range(steps):
            optimiser.zero_grad()
            out = decode_all(weights, hidden)
            inside_error = ((out * inside - fg) ** 2).flatten(1).mean(1)
            outside_error = ((out * (1 - inside) - bg) ** 2).flatten(1).mean(1)
            (inside_error + preservation * outside_error).sum().backward()
            optimiser.step()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        out = decode_all(weights, hidden)
    return ((out + 1) / 2).clamp(0, 1)
