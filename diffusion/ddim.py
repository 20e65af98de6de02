"""Shared diffusion primitives: the DDIM schedule, guided noise prediction, inversion and sampling.

Every method that inverts or samples uses these, so that the round trip is exact by construction:
inversion and sampling walk the same list of (timestep, alpha) pairs with one update formula.
We write the DDIM update here instead of calling `DDIMScheduler.step` / `DDIMInverseScheduler`
because guidance scales vary per batch row (a sweep batches its points) and methods step between
arbitrary pairs of the schedule (EDICT, Null-text's inner loop, partial inversions); the inversion
agrees with `DDIMInverseScheduler` stepped by hand to 1e-5 (tests/diffusion/test_ddim.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inputs import images_tensor, source_prompts


@dataclass(frozen=True)
class Schedule:
    """The DDIM timesteps (descending) and alpha-bars around them.

    `alphas[i]` is alpha-bar at `timesteps[i]`; `alphas[n]` is the final alpha-bar (x_0's).
    Sampling step i moves from alphas[i] to alphas[i + 1]; inversion walks the same steps backwards.
    """

    timesteps: torch.Tensor
    alphas: torch.Tensor

    @property
    def steps(self) -> int:
        """The number of denoising steps."""
        return len(self.timesteps)


class DDIMParams(Params):
    """The DDIM schedule used to invert (at guidance 1, with the source prompt) and to edit."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")


def make_schedule(backbone: Backbone, steps: int) -> Schedule:
    """The DDIM schedule of `steps` steps for the backbone's training noise schedule."""
    scheduler = backbone.scheduler
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.clone().long()
    alphas_cumprod = scheduler.alphas_cumprod.double()
    final = torch.tensor(1.0, dtype=torch.float64) if scheduler.config.set_alpha_to_one else alphas_cumprod[0]
    alphas = torch.cat([alphas_cumprod[timesteps], final[None]])
    return Schedule(timesteps=timesteps, alphas=alphas)


def encoding_start(steps: int, ratio: float) -> int:
    """The sampling step to start from when only `ratio` of a `steps`-step trajectory is inverted.

    At least one step is inverted; ratio 1 gives step 0 (the whole trajectory).
    """
    return steps - max(1, round(ratio * steps))


def ddim_move(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Deterministic DDIM update from noise level alpha_from to alpha_to (either direction)."""
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def predict_noise(
    backbone: Backbone,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance: torch.Tensor | float = 1.0,
    alpha: float | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Classifier-free-guided noise prediction eps_u + g * (eps_c - eps_u), g per batch row.

    With every g equal to 1 (or no `uncond`) the unconditional pass is skipped. v-prediction
    models (SD 2.x 768 px) are converted to epsilon, which needs the step's `alpha`. `values`
    replaces `cond` as the value input of the cross-attention of the conditional rows (the
    unconditional rows keep their own); it needs a `P2PAttnProcessor` on the UNet.
    """
    batch = latents.shape[0]
    g = torch.as_tensor(guidance, dtype=torch.float32, device=latents.device).reshape(-1)
    g = g.expand(batch) if g.numel() == 1 else g
    if uncond is None or bool((g == 1).all()):
        return unet_epsilon(backbone, latents, t, cond, alpha, values)
    both_values = None if values is None else torch.cat([uncond, values])
    both = unet_epsilon(backbone, torch.cat([latents, latents]), t, torch.cat([uncond, cond]), alpha, both_values)
    eps_u, eps_c = both.chunk(2)
    return eps_u + g.view(-1, 1, 1, 1) * (eps_c - eps_u)


def unet_epsilon(
    backbone: Backbone,
    latents: torch.Tensor,
    t: torch.Tensor,
    embeddings: torch.Tensor,
    alpha: float | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UNet call, row by row (no guidance): its float32 noise prediction, as epsilon. `values`
    as in `predict_noise` (one per row). The text goes through `Backbone.unet_text` (SDXL's pooled and
    size conditioning, diffusion/sdxl.py)."""
    unet_dtype = backbone.unet.dtype
    hw = tuple(latents.shape[-2:])
    states, added = backbone.unet_text(embeddings.to(unet_dtype), hw)
    kwargs = None if values is None else {"value_states": backbone.unet_text(values.to(unet_dtype), hw)[0]}
    extra = {} if added is None else {"added_cond_kwargs": added}
    out = backbone.unet(
        latents.to(unet_dtype), t, encoder_hidden_states=states, cross_attention_kwargs=kwargs, **extra
    ).sample.float()
    return to_epsilon(backbone, out, latents, alpha)


def to_epsilon(backbone: Backbone, out: torch.Tensor, latents: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """The UNet's output `out` at `latents` as predicted noise, whatever the scheduler's prediction
    type (loops that call the UNet themselves, e.g. diffusion/controlnet.py, use it too)."""
    kind = backbone.scheduler.config.prediction_type
    if kind == "epsilon":
        return out
    if kind == "v_prediction":
        if alpha is None:
            raise ValueError("a v-prediction backbone needs the step's alpha to predict noise")
        return alpha**0.5 * out + (1 - alpha) ** 0.5 * latents.float()
    raise ValueError(f"unsupported prediction_type {kind!r}: editsweep handles 'epsilon' and 'v_prediction'")


@torch.no_grad()
def ddim_invert(
    backbone: Backbone,
    latents: torch.Tensor,
    schedule: Schedule,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance: torch.Tensor | float = 1.0,
    start: int = 0,
    regularise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """DDIM inversion of clean latents up to `schedule.timesteps[start]`; returns the trajectory.

    The trajectory is (steps - start + 1, B, C, h, w): [0] = x_0, [-1] the latent at
    `timesteps[start]`, where `ddim_sample(..., start=start)` resumes. Each step evaluates the
    noise at the current (less noisy) latent with the next timestep, the usual approximation that
    makes inversion exact in the limit of many steps. `regularise` maps each step's predicted noise
    to the noise the step uses (pix2pix-zero's noise regularisation, diffusion/pix2pix_zero.py).
    """
    x = latents.float()
    trajectory = [x]
    n = schedule.steps
    for i in reversed(range(start, n)):
        a_from, a_to = schedule.alphas[i + 1].item(), schedule.alphas[i].item()
        eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, guidance, alpha=a_from)
        if regularise is not None:
            eps = regularise(eps)
        x = ddim_move(x, eps, a_from, a_to)
        trajectory.append(x)
    return torch.stack(trajectory)


@torch.no_grad()
def ddim_sample(
    backbone: Backbone,
    latents: torch.Tensor,
    schedule: Schedule,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance: torch.Tensor | float = 1.0,
    start: int = 0,
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise latents that sit at `schedule.timesteps[start]` down to x_0 with DDIM (eta 0).

    `after_step(i, x)`, when given, replaces the latents after step i (mask-guided methods blend there).
    """
    x = latents.float()
    for i in range(start, schedule.steps):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, guidance, alpha=a_from)
        x = ddim_move(x, eps, a_from, a_to)
        if after_step is not None:
            x = after_step(i, x)
    return x


def ddim_loop(
    latents: torch.Tensor, schedule: Schedule, predict: Callable[[int, torch.Tensor, float], torch.Tensor]
) -> torch.Tensor:
    """Denoise pure-noise latents to x_0 with DDIM (eta 0), `predict(i, x, alpha)` giving step i's
    noise (the loops of the condition-guided methods, whose predictions need more than the text)."""
    x = latents.float()
    for i in range(schedule.steps):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        x = ddim_move(x, predict(i, x, a_from), a_from, a_to)
    return x


def draw_noise(backbone: Backbone, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Initial latents (B, C, h, w) of pure noise, one draw per sample from its own generator (so every
    edit point of a sample starts from the same noise), on the backbone's device."""
    side = backbone.resolution // backbone.vae_scale_factor
    shape = (backbone.unet.config.in_channels, side, side)
    return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators]).to(backbone.device)


def invert_source(backbone: Backbone, samples: Sequence[Sample], steps: int) -> torch.Tensor:
    """The DDIM inversion trajectory (steps + 1, B, C, h, w) of the samples with their source
    prompts at guidance 1: the starting point of DDIM, Null-text, Negative-prompt and Direct inversion."""
    latents = backbone.encode_images(images_tensor(samples, backbone.device))
    cond = backbone.encode_text(source_prompts(samples))
    return ddim_invert(backbone, latents, make_schedule(backbone, steps), cond)
