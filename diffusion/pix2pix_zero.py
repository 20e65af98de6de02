"""pix2pix-zero (Parmar et al. 2023, "Zero-shot Image-to-Image Translation"): its noise
regularisation for DDIM inversion, its edit direction and its cross-attention guidance.

Follows the paper's code (`pix2pixzero/pix2pix-zero`: `src/utils/ddim_inv.py`,
`src/utils/edit_pipeline.py`, `src/make_edit_direction.py`) and, where they agree, diffusers'
`StableDiffusionPix2PixZeroPipeline` (tested against it in tests/diffusion/test_pix2pix_zero.py):

- **noise regularisation** (`regularise_noise`): at each inversion step the predicted noise takes
  `reg_steps` rounds of gradient steps, each `ac_rolls` steps of lambda_ac / ac_rolls on the
  auto-correlation loss (squared mean of the noise times itself rolled by a random shift along
  each spatial axis, on a pyramid of 2x average-pooled maps down to 8 px) and one step of
  lambda_kl on the KL divergence of the map's mean and variance from N(0, 1). Shifts are drawn
  in [1, size // 2) as the paper's code (`randrange`, fixed in 2024: its README says the first
  release's roll "would sometimes not get applied"); the diffusers pipeline draws them in
  [0, size // 2), as that release, where a shift of 0 turns a term into the squared second
  moment, which pulls the noise towards zero against the KL term. Every loss is per sample and
  every shift drawn from the sample's own generator (channel by channel, level by level, as both
  codes draw them), so a sample's inversion does not depend on its batch (the diffusers pipeline
  takes one KL over the whole batch).
- **edit direction** (`edit_direction`): the mean text embedding of the target sentences minus
  that of the source sentences, added to the source prompt's embedding.
- **cross-attention guidance** (`xa_guided_rows`): a reference pass denoises the source rows and
  records their cross-attention maps; at each step the target rows (source prompt + direction)
  first take one SGD step of size `xa_guidance` on their latent, with the loss the squared
  difference of their cross-attention maps to the reference's, summed over queries and tokens,
  averaged over heads and the two halves of classifier-free guidance and summed over layers;
  then they predict their noise from the moved latent. As both codes, each CFG half moves its own
  copy of the latent (the unconditional copy matches the reference's unconditional maps), each
  half's noise is predicted at its copy, and the step continues from the unconditional copy
  (`x_in.chunk(2)[0]`).

The reference pass runs interleaved with the edited one, step by step (both codes run it first
and keep every step's maps), so no maps are stored beyond one step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from editsweep.diffusion.attention import AttentionRecorder, controlled_unet
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import unet_epsilon
from editsweep.diffusion.inverted import Inverted

# As both codes: the pyramid of the auto-correlation loss stops at the first level of at most 8 px.
PYRAMID_STOP = 8
# The mean text embedding of many sentences is taken over chunks of this many (diffusers' get_embeds).
SENTENCE_CHUNK = 16


def pyramid_sizes(size: int) -> list[int]:
    """The side of each level of the auto-correlation pyramid for a map of side `size`."""
    sizes = [size]
    while sizes[-1] > PYRAMID_STOP:
        sizes.append(sizes[-1] // 2)
    return sizes


def draw_shifts(generators: Sequence[torch.Generator], channels: int, size: int) -> torch.Tensor:
    """(B, C, levels) roll amounts in [1, side // 2), each sample's from its generator, drawn
    channel by channel and level by level as the paper's code draws them (a side under 4 leaves
    only 1)."""
    sizes = pyramid_sizes(size)
    return torch.tensor(
        [
            [[int(torch.randint(1, max(s // 2, 2), (1,), generator=g)) for s in sizes] for _ in range(channels)]
            for g in generators
        ]
    )


def _roll(x: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """`torch.roll(x[b, c], shifts[b, c], dims=dim)` for every (b, c) at once: torch.roll takes one
    shift per call, and the shifts differ per sample and channel."""
    n = x.shape[dim]
    index = (torch.arange(n, device=x.device) - shifts.to(x.device)[..., None]) % n  # (B, C, n)
    index = index[..., None] if dim == 2 else index[:, :, None, :]
    return x.gather(dim, index.expand(x.shape))


def auto_correlation_loss(noise: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """(B,) the auto-correlation loss of each sample's noise map (B, C, h, w) for the given shifts
    (`draw_shifts`): over channels and pyramid levels, the squared mean of the map times itself
    rolled along the rows, plus the same along the columns."""
    loss = noise.new_zeros(noise.shape[0])
    x = noise
    for level in range(shifts.shape[2]):
        for dim in (2, 3):
            loss = loss + (x * _roll(x, shifts[:, :, level], dim)).mean((2, 3)).pow(2).sum(1)
        if level + 1 < shifts.shape[2]:
            x = F.avg_pool2d(x, kernel_size=2)
    return loss


def kl_divergence(noise: torch.Tensor) -> torch.Tensor:
    """(B,) each sample's var + mean^2 - 1 - log var over its whole map (unbiased variance, as both codes)."""
    flat = noise.flatten(1)
    mean, var = flat.mean(1), flat.var(1)
    return var + mean**2 - 1 - torch.log(var + 1e-7)


def regularise_noise(
    eps: torch.Tensor,
    generators: Sequence[torch.Generator],
    lambda_ac: float,
    lambda_kl: float,
    reg_steps: int,
    ac_rolls: int,
) -> torch.Tensor:
    """The predicted noise after pix2pix-zero's gradient steps towards white Gaussian noise."""
    eps = eps.detach().float()
    with torch.enable_grad():
        for _ in range(reg_steps):
            if lambda_ac > 0:
                for _ in range(ac_rolls):
                    var = eps.detach().requires_grad_(True)
                    shifts = draw_shifts(generators, eps.shape[1], eps.shape[2])
                    (grad,) = torch.autograd.grad(auto_correlation_loss(var, shifts).sum(), var)
                    eps = eps - lambda_ac * (grad / ac_rolls)
            if lambda_kl > 0:
                var = eps.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(kl_divergence(var).sum(), var)
                eps = eps - lambda_kl * grad
    return eps.detach()


def mean_embedding(backbone: Backbone, sentences: Sequence[str]) -> torch.Tensor:
    """(L, D) float32: the mean text embedding of the sentences."""
    total = None
    for k in range(0, len(sentences), SENTENCE_CHUNK):
        part = backbone.encode_text(list(sentences[k : k + SENTENCE_CHUNK])).float().sum(0)
        total = part if total is None else total + part
    return total / len(sentences)


def edit_direction(backbone: Backbone, source: Sequence[str], target: Sequence[str]) -> torch.Tensor:
    """(L, D) float32: mean embedding of the target sentences minus that of the source sentences."""
    if not source or not target:
        raise ValueError(f"an edit direction needs sentences on both sides (got {len(source)} and {len(target)})")
    return mean_embedding(backbone, target) - mean_embedding(backbone, source)


def _map_loss(maps: list[torch.Tensor], references: list[torch.Tensor]) -> torch.Tensor:
    """Sum over rows and layers of each row's squared map difference, summed over queries and
    tokens and averaged over heads and the two CFG halves (the codes' `.sum((1, 2)).mean(0)` over
    one sample's halves and heads)."""
    loss = maps[0].new_zeros((), dtype=torch.float32)
    for current, reference in zip(maps, references, strict=True):
        loss = loss + ((current.float() - reference.float()) ** 2).sum() / (2 * current.shape[1])
    return loss


@torch.no_grad()
def xa_guided_rows(
    backbone: Backbone,
    inverted: Inverted,
    source_cond: torch.Tensor,
    target_cond: torch.Tensor,
    negative_source: torch.Tensor,
    xa_guidance: torch.Tensor,
    guidance: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pix2pix-zero's denoising of rows [sources (B); targets (T = P * B, point-major)]: final
    (source, target) latents.

    `source_cond` (B, L, D): the source prompts. `target_cond` (T, L, D): each target row's
    conditional embedding (source prompt + edit direction). `negative_source` (T,) bool: the
    target row's unconditional embedding is its source prompt (the paper's code) rather than the
    inversion's; its reference maps for that half are then the source's conditional maps.
    `xa_guidance` (T,): each target row's SGD step size; `guidance` (T,): its CFG scale. The
    source rows retrace the input at the inversion's scale (`Inverted.retrace_scale`) and follow
    its trajectory when it has one.
    """
    if inverted.sampler is not None:
        raise ValueError("pix2pix-zero moves the target latents between its UNet calls: it cannot run an inversion whose step calls the denoiser itself (EDICT)")
    batch, schedule = len(source_cond), inverted.schedule
    index = torch.arange(batch, device=source_cond.device).repeat(len(target_cond) // batch)
    device = inverted.start.device
    g_source = torch.tensor(inverted.retrace_scale, device=device)
    g_target = guidance.to(device).view(-1, 1, 1, 1)
    step_sizes = torch.cat([xa_guidance, xa_guidance]).to(device).view(-1, 1, 1, 1)
    use_source = negative_source.to(device)
    guided = bool((xa_guidance > 0).any())
    xs = inverted.start.float()
    xt = xs[index]
    recorder = AttentionRecorder()
    with controlled_unet(backbone.unet, recorder):
        for i in range(schedule.steps):
            t, alpha = schedule.timesteps[i], schedule.alphas[i].item()
            uncond = inverted.uncond[i] if inverted.uncond.dim() == 4 else inverted.uncond
            both = unet_epsilon(backbone, torch.cat([xs, xs]), t, torch.cat([uncond, source_cond]), alpha)
            eps_u, eps_c = both.chunk(2)
            eps_source = eps_u + g_source * (eps_c - eps_u)
            reference = recorder.take()
            target_uncond = torch.where(use_source.view(-1, 1, 1), source_cond[index], uncond[index])
            embeddings = torch.cat([target_uncond, target_cond])
            latents = torch.cat([xt, xt])
            if guided:
                pick = use_source.view(-1, 1, 1, 1)
                references = [
                    torch.cat([torch.where(pick, m[batch:][index], m[:batch][index]), m[batch:][index]])
                    for m in reference
                ]
                with torch.enable_grad():
                    x_in = latents.detach().requires_grad_(True)
                    unet_epsilon(backbone, x_in, t, embeddings, alpha)
                    (grad,) = torch.autograd.grad(_map_loss(recorder.take(), references), x_in)
                latents = latents - step_sizes * grad
            both = unet_epsilon(backbone, latents, t, embeddings, alpha)
            recorder.take()
            eps_u, eps_c = both.chunk(2)
            eps_target = eps_u + g_target * (eps_c - eps_u)
            eps = torch.cat([eps_source, eps_target])
            x = inverted.step(i, torch.cat([xs, latents[: len(xt)]]), lambda _: eps)
            if inverted.trajectory is not None:
                x[:batch] = inverted.trajectory[schedule.steps - i - 1].float()
            xs, xt = x[:batch], x[batch:]
    return xs, xt
