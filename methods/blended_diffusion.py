"""`blended_diffusion`: Blended Diffusion (Avrahami, Lischinski, Fried, CVPR 2022), after its reference
code `omriav/blended-diffusion` (`optimization/image_editor.py`, `optimization/arguments.py`).

The paper samples a pixel-space, unconditional ImageNet ADM (guided-diffusion 256x256 uncond); the
text enters only through CLIP guidance. editsweep's backbones are latent Stable Diffusion models, so
this is the **latent adaptation**: the same algorithm on the backbone's latents, its UNet called
with the empty prompt (unconditional, as the paper's model), the CLIP and background losses taken
on the VAE decoder's pixels of the step's estimate and differentiated through the decoder. (Blended
*Latent* Diffusion, `methods/blended_latent.py`, drops the CLIP guidance for the text-conditional
UNet instead; this keeps it.) Per DDPM step t (the paper's Algorithm 2, the reference's `cond_fn`):

1. x0_hat from the UNet's noise at x_t; x_in = x0_hat * sqrt(1 - a_t) + x_t * (1 - sqrt(1 - a_t))
   (the reference's blend of the estimate and the noisy sample), decoded to pixels in [-1, 1];
2. loss = `clip_lambda` * D_CLIP(x_in inside the mask, the target prompt) averaged over
   `augmentations` views (`diffusion/clip_guidance.py`) + `range_lambda` * range loss of decoded
   x0_hat + with `background_loss`: `l2_lambda` * MSE + `lpips_lambda` * LPIPS (VGG) of x_in and the
   input outside the mask;
3. the DDPM posterior mean of q(x_{t-1} | x_t, x0_hat) shifted by variance * (-grad loss) (guided
   diffusion's `condition_mean`), plus noise (none at the last step);
4. blending: outside the mask x_{t-1} is the input's latent noised afresh to level t-1 (the last
   step: the input's latent itself).

Sampling starts from the input noised to `strength` of the schedule (the reference skips 25 of 100
respaced steps). `candidates` results are drawn per sample and edit point and the one closest to
the prompt in CLIP (spherical distance of the masked result, unaugmented) is returned (the
reference's ranking of 8 iterations x batch 4). `background: pixel` (the reference's
`enforce_background`, on by default) pastes the input's pixels outside the mask into the decoded
result, so the background is the input's bit for bit.

Differences from the reference, beyond the latent space: the DDPM variance is the fixed posterior
variance (diffusers' `DDPMScheduler` "fixed_small"; the ADM learns it); the background blend uses
the level the step reaches (the paper's Algorithm 2; the code noises to the level the step starts
from); the background loss compares both images masked (the code compares the masked estimate with
the whole input); the ranking distance normalises the image as CLIP expects (the code skips it);
each candidate draws its noise and augmentations from its own generator, seeded from the
sample's, and `CANDIDATE_CHUNK` (4, the reference's batch) candidates share a sampling loop, which
bounds memory without changing results (`diffusion/clip_guidance.py` for the augmentations). `mask:
dataset` reads `meta["mask"]`; `mask: diffedit` computes DiffEdit's mask from the prompts
(`diffusion/diffedit_mask.py`, its noise level on a `mask_steps` schedule) for datasets without
masks; `mask: full` edits the whole image (the reference without `--mask`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from editsweep.core.hub import WeightsError
from editsweep.core.lpips_models import build_lpips
from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone, unet_refusal
from editsweep.diffusion.blending import blend_outside, upsample_mask
from editsweep.diffusion.clip_guidance import (
    ClipGuide,
    ClipParams,
    augmentation_grids,
    clip_loss,
    clip_source,
    load_clip_guide,
    range_loss,
    spherical_distance,
)
from editsweep.diffusion.ddim import encoding_start, make_schedule, unet_epsilon
from editsweep.diffusion.diffedit_mask import DiffEditMaskParams, binarise, diffedit_maps
from editsweep.diffusion.inputs import forked, images_tensor, source_prompts, target_prompts
from editsweep.diffusion.masks import dataset_mask, require_dataset_masks
from editsweep.methods.base import EncodesInput, State, register_method

UNET_IN_CHANNELS = 4
# Candidates per sampling loop (the reference's batch of 4): bounds the memory of the guided steps,
# which backpropagate through the UNet and the VAE decoder; results do not depend on it.
CANDIDATE_CHUNK = 4


class BlendedDiffusionInvertParams(DiffEditMaskParams, ClipParams):
    """The mask (DiffEdit's parameters apply with `mask: diffedit`) and the guidance models (recorded
    in each row's `weights`)."""

    mask: Literal["dataset", "diffedit", "full"] = Field(
        "dataset",
        description="the dataset's meta['mask'], DiffEdit's mask from the prompts, or full: the whole image",
    )
    mask_steps: int = Field(50, ge=1, le=1000, description="DDIM schedule DiffEdit's mask_strength refers to")
    clip: str = Field(
        "ViT-B-16",
        description="guidance CLIP (the paper's OpenAI ViT-B/16): open_clip name, hf-hub:org/name, absolute folder, "
        "toy or random",
    )
    background_loss: bool = Field(False, description="add the background-preservation loss (the reference's flag, off)")
    lpips_weights: str = Field(
        "pretrained", min_length=1, description="LPIPS VGG backbone of the background loss: pretrained, random, path"
    )


class BlendedDiffusionEditParams(Params):
    """The reference's defaults: 100 DDPM steps, 25 skipped, lambdas 1000 / 50 / 1000 / 10000, 8 views."""

    steps: int = Field(100, ge=1, le=1000, description="DDPM steps of a full schedule (the reference's respacing)")
    strength: float = Field(0.75, gt=0, le=1, description="fraction of the schedule re-generated (25 of 100 skipped)")
    clip_lambda: float = Field(1000.0, ge=0, le=1e6, description="CLIP guidance weight")
    range_lambda: float = Field(50.0, ge=0, le=1e6, description="weight of the loss on pixels beyond [-1, 1]")
    l2_lambda: float = Field(10000.0, ge=0, le=1e7, description="background MSE weight (with background_loss)")
    lpips_lambda: float = Field(1000.0, ge=0, le=1e6, description="background LPIPS weight (with background_loss)")
    augmentations: int = Field(8, ge=1, le=64, description="CLIP views per step: the image and n - 1 augmentations")
    candidates: int = Field(32, ge=1, le=256, description="results drawn per edit; the best by CLIP is kept (8 x 4)")
    background: Literal["pixel", "none"] = Field(
        "pixel", description="pixel: the input's pixels outside the mask (the reference's enforce_background)"
    )


@functools.lru_cache(maxsize=2)
def load_lpips(weights: str, device: str) -> tuple[torch.nn.Module, str]:
    """LPIPS (VGG) for the background loss, loaded as the `lpips` scorer loads it, frozen."""
    try:
        model, source = build_lpips("vgg", weights)
    except WeightsError as exc:
        raise WeightsError(f"{exc} (blended_diffusion's `lpips_weights`)") from exc
    return model.to(device).eval().requires_grad_(False), source


@register_method
class BlendedDiffusion(EncodesInput):
    """CLIP-guided DDPM inside the mask, the input's noised latent outside it, best of `candidates`."""

    name = "blended_diffusion"
    InvertParams = BlendedDiffusionInvertParams
    EditParams = BlendedDiffusionEditParams

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """The guidance CLIP, and LPIPS' backbone when the background loss is on."""
        sources = {"guidance_clip": clip_source(invert_params.clip, invert_params.clip_tag)}
        if invert_params.background_loss:
            weights = invert_params.lpips_weights
            sources["background_lpips"] = "vgg:random" if weights == "random" else f"vgg:{weights}"
        return sources

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        return unet_refusal(cls.name, backbone, UNET_IN_CHANNELS)

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: BlendedDiffusionInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        if backbone.unet_in_channels != UNET_IN_CHANNELS:
            raise ValueError(
                f"{self.name} cannot run on backbone {backbone.name!r}: its UNet takes {backbone.unet_in_channels} "
                "input channels; use a text-to-image backbone"
            )
        if params.mask == "dataset":
            require_dataset_masks(self.name, samples)
        load_clip_guide(params.clip, params.clip_tag, backbone.device, self.name)  # fail the group early
        if params.background_loss:
            load_lpips(params.lpips_weights, str(backbone.device))
        latents = super().invert(backbone, samples, params, generators, seeds)["latents"]
        inputs = images_tensor(samples, backbone.device).float()
        pixel_mask, latent_mask = masks(backbone, samples, params, inputs, latents, generators)
        return {"latents": latents, "pixel_mask": pixel_mask, "latent_mask": latent_mask}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: BlendedDiffusionInvertParams,
        edit_params: Sequence[BlendedDiffusionEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        clean = state["latents"].float()
        inputs = images_tensor(samples, backbone.device).float()
        pixel_mask, latent_mask = state["pixel_mask"], state["latent_mask"]
        clip = load_clip_guide(invert_params.clip, invert_params.clip_tag, backbone.device, self.name)
        lpips = None
        if invert_params.background_loss:
            lpips = load_lpips(invert_params.lpips_weights, str(backbone.device))[0]
        texts = clip.text_embeddings(target_prompts(samples))
        guide = Guide(backbone, clip, lpips, inputs * 2 - 1, pixel_mask, texts)

        # One sampling loop per group of points that draw the same numbers.
        groups: dict[tuple, list[int]] = {}
        for k, p in enumerate(edit_params):
            key = (p.steps, encoding_start(p.steps, p.strength), p.candidates, p.augmentations)
            groups.setdefault(key, []).append(k)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for (steps, start, candidates, views), indices in groups.items():
            points = [edit_params[k] for k in indices]
            latents = guided_blended_sample(
                backbone, guide, clean, latent_mask, steps, start, candidates, views, points, forked(generators)
            )
            images = decoded(backbone, latents)
            for j, k in enumerate(indices):
                chunk = images.view(len(indices), len(samples), candidates, *images.shape[1:])[j]
                if edit_params[k].background == "pixel":
                    inside = pixel_mask[:, None, None]
                    chunk = inside * chunk + (1 - inside) * inputs[:, None]
                results[k] = best_candidates(clip, chunk, pixel_mask, texts)
        return results


def masks(
    backbone: Backbone,
    samples: Sequence[Sample],
    params: BlendedDiffusionInvertParams,
    inputs: torch.Tensor,
    latents: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) pixel and (B, h, w) latent 0/1 masks (1 = edit): everything, DiffEdit's (at the
    latent size, its cells upsampled to pixels; draws from copies of the generators), or the dataset's
    (each brought to both sizes by the image's center crop and a nearest resize)."""
    if params.mask == "full":
        return torch.ones_like(inputs[:, 0]), torch.ones_like(latents[:, 0])
    if params.mask == "diffedit":
        schedule = make_schedule(backbone, params.mask_steps)
        source, target = source_prompts(samples), target_prompts(samples)
        maps = diffedit_maps(backbone, latents, source, target, schedule, params, forked(generators))
        latent = binarise(maps, params.mask_clamp, params.mask_threshold)
        return upsample_mask(latent, tuple(inputs.shape[-2:])), latent
    pixel = torch.stack([dataset_mask(s, tuple(inputs.shape[-2:])) for s in samples]).to(inputs.device)
    latent = torch.stack([dataset_mask(s, tuple(latents.shape[-2:])) for s in samples]).to(latents.device)
    return pixel, latent


def decoded(backbone: Backbone, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] of latents, decoded in chunks of the batch size the other calls use."""
    return torch.cat([backbone.decode(chunk) for chunk in latents.split(16)])


class Guide:
    """The per-step guidance of Blended Diffusion: the noise prediction and -grad of the losses."""

    def __init__(
        self,
        backbone: Backbone,
        clip: ClipGuide,
        lpips: torch.nn.Module | None,
        inputs: torch.Tensor,
        pixel_mask: torch.Tensor,
        texts: torch.Tensor,
    ) -> None:
        self.backbone, self.clip, self.lpips = backbone, clip, lpips
        self.inputs, self.pixel_mask, self.texts = inputs, pixel_mask, texts
        self.uncond = backbone.encode_text([""])

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        alpha: float,
        lambdas: dict[str, torch.Tensor],
        grids: torch.Tensor,
        rows_per_sample: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, -grad of the loss) at x (R, C, h, w); row r belongs to sample (r // rows_per_sample) % B.
        `lambdas` are per-row weights (R,); `grids` each row's views (R, n, s, s, 2)."""
        uncond = self.uncond.expand(len(x), -1, -1)
        if not any(bool((w > 0).any()) for w in lambdas.values()):
            with torch.no_grad():
                return unet_epsilon(self.backbone, x, t, uncond, alpha), torch.zeros_like(x)
        owner = torch.arange(len(x), device=x.device) // rows_per_sample % len(self.inputs)
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            eps = unet_epsilon(self.backbone, x, t, uncond, alpha)
            x0 = (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5
            fac = (1 - alpha) ** 0.5
            x_in = x0 * fac + x * (1 - fac)
            use_range = bool((lambdas["range"] > 0).any())
            pixels = self.decode(torch.cat([x_in, x0]) if use_range else x_in)
            image = pixels[: len(x)]
            inside = self.pixel_mask[owner][:, None]
            loss = lambdas["clip"] * clip_loss(self.clip, (image * inside + 1) / 2, self.texts[owner], grids)
            if use_range:
                loss = loss + lambdas["range"] * range_loss(pixels[len(x) :])
            if self.lpips is not None:
                background, reference = image * (1 - inside), self.inputs[owner] * (1 - inside)
                loss = loss + lambdas["l2"] * (background - reference).pow(2).mean((1, 2, 3))
                loss = loss + lambdas["lpips"] * self.lpips(background, reference).flatten()
            grad = torch.autograd.grad(loss.sum(), x)[0]
        return eps.detach(), -grad

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable VAE decoding to [-1, 1] pixels (float32)."""
        vae = self.backbone.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float()


def ddpm_guided_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha: float,
    alpha_prev: float,
    noise: torch.Tensor | None,
    gradient: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDPM step from level `alpha` to `alpha_prev` (alpha-bars): the posterior mean of
    q(x_prev | x, x0_hat) (x0_hat from `eps`, unclipped) plus variance * `gradient` (guided
    diffusion's `condition_mean`), plus sqrt(variance) * `noise` (None: the last step). The variance
    is the posterior's ("fixed_small"): this equals diffusers' `DDPMScheduler.step` without guidance."""
    beta = 1 - alpha / alpha_prev
    x0 = (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5
    mean = (alpha_prev**0.5 * beta / (1 - alpha)) * x0 + ((1 - beta) ** 0.5 * (1 - alpha_prev) / (1 - alpha)) * x
    variance = max(beta * (1 - alpha_prev) / (1 - alpha), 1e-20)
    if gradient is not None:
        mean = mean + variance * gradient
    return mean if noise is None else mean + variance**0.5 * noise


def candidate_streams(streams: Sequence[torch.Generator], candidates: int) -> list[list[torch.Generator]]:
    """Per sample, one generator per candidate, seeded from draws of the sample's stream: a candidate's
    numbers do not depend on how many candidates share a sampling loop."""
    seeds = [torch.randint(0, 2**62, (candidates,), generator=g, device=g.device).tolist() for g in streams]
    return [[torch.Generator().manual_seed(int(seed)) for seed in row] for row in seeds]


def guided_blended_sample(
    backbone: Backbone,
    guide: Guide,
    clean: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    start: int,
    candidates: int,
    views: int,
    points: Sequence[BlendedDiffusionEditParams],
    streams: Sequence[torch.Generator],
    chunk: int | None = None,
) -> torch.Tensor:
    """Final latents (P * B * candidates, C, h, w), point-major then sample then candidate, of the
    `points` sharing one schedule, start, candidate count and view count, `chunk` candidates per
    sampling loop (default `CANDIDATE_CHUNK`; memory only: the result does not depend on it).
    Sample b's stream gives each candidate's seed (`candidate_streams`), then per step the
    background's noise (not at the last step); candidate k's stream gives its start noise, then per
    step its DDPM noise (not at the last step) and its views' parameters. Every point uses the same
    draws."""
    n_points, batch = len(points), len(clean)
    schedule = make_schedule(backbone, steps)
    # DDPM ends at x_0 itself (alpha-bar 1), as guided diffusion's and diffusers' DDPM samplers do.
    alphas = torch.cat([schedule.alphas[:-1], torch.ones(1, dtype=schedule.alphas.dtype)])
    shape, device = clean.shape[1:], clean.device
    own = candidate_streams(streams, candidates)
    chunk = chunk or CANDIDATE_CHUNK

    def draw(generators: Sequence[torch.Generator]) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators]).to(device)

    weights = {
        "clip": [p.clip_lambda for p in points],
        "range": [p.range_lambda for p in points],
        "l2": [p.l2_lambda if guide.lpips is not None else 0.0 for p in points],
        "lpips": [p.lpips_lambda if guide.lpips is not None else 0.0 for p in points],
    }
    finals = []
    for first in range(0, candidates, chunk):
        width = min(chunk, candidates - first)
        rows = [row[first : first + width] for row in own]  # (B, width) generators, sample-major
        flat = [g for row in rows for g in row]
        backgrounds = forked(streams)  # every chunk sees the same background noise
        lambdas = {k: torch.tensor(v, device=device).repeat_interleave(batch * width) for k, v in weights.items()}
        a_start = alphas[start].item()
        repeated = clean.repeat_interleave(width, dim=0)
        x = (a_start**0.5 * repeated + (1 - a_start) ** 0.5 * draw(flat)).repeat(n_points, 1, 1, 1)
        rows_mask = mask.repeat_interleave(width, dim=0).repeat(n_points, 1, 1)
        for i in range(start, steps):
            last = i == steps - 1
            alpha, alpha_prev = alphas[i].item(), alphas[i + 1].item()
            noise = None if last else draw(flat).repeat(n_points, 1, 1, 1)
            grids = augmentation_grids(views, guide.clip.image_size, flat, device).repeat(n_points, 1, 1, 1, 1)
            background = clean if last else alpha_prev**0.5 * clean + (1 - alpha_prev) ** 0.5 * draw(backgrounds)
            eps, gradient = guide(x, schedule.timesteps[i], alpha, lambdas, grids, width)
            x = ddpm_guided_step(x, eps, alpha, alpha_prev, noise, gradient)
            rows_background = background.repeat_interleave(width, dim=0).repeat(n_points, 1, 1, 1)
            x = blend_outside(rows_mask, lambda _, b=rows_background: b)(i, x)
        finals.append(x.view(n_points, batch, width, *shape))
    return torch.cat(finals, dim=2).flatten(0, 2)


@torch.no_grad()
def best_candidates(
    clip: ClipGuide, images: torch.Tensor, pixel_mask: torch.Tensor, texts: torch.Tensor
) -> torch.Tensor:
    """(B, 3, H, W): per sample, the candidate (of images (B, K, 3, H, W) in [0, 1]) whose masked
    image is closest to its prompt in CLIP (the reference's ranking: masked, unaugmented)."""
    batch, k = images.shape[:2]
    if k == 1:
        return images[:, 0]
    masked = (images * pixel_mask[:, None, None]).flatten(0, 1)
    embeddings = clip.image_embeddings(F.adaptive_avg_pool2d(masked, clip.image_size))
    distance = spherical_distance(embeddings, texts.repeat_interleave(k, dim=0)).view(batch, k)
    return images[torch.arange(batch), distance.argmin(1)]
