"""Editing with Prompt-to-Prompt: the parameters and the controlled denoising loop that the
inversion methods (DDIM, Null-text, Negative-prompt, Direct inversion) share.

`p2p_edit` runs one loop per distinct guidance scale over the rows [sources; targets]: one source
(reconstruction) row per sample and one target row per (edit point, sample). What differs between
the inversion methods is passed in: the unconditional embedding (per step for Null-text), and an
optional source trajectory that pins the source rows to the inversion latents (Direct inversion),
and optional per-step value inputs of the cross-attention (StyleDiffusion).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.attention import LocalBlend, P2PControl, controlled_unet
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, predict_noise
from editsweep.diffusion.inputs import source_prompts, target_prompts
from editsweep.diffusion.inverted import Advance, Sampler, sample_step
from editsweep.diffusion.prompt_alignment import refine_mapper, replace_mapper, word_positions

Fraction = Annotated[float, Field(ge=0, le=1)]
Window = tuple[Fraction, Fraction]
"""(start, end) fractions of the steps, as the reference code's schedules accept them."""


class P2PParams(Params):
    """Prompt-to-Prompt controls of one edit point (they change only the edit).

    As the reference code: `cross_replace` is a fraction of the steps, a (start, end) window, or per
    word `{"default_": 0.8, "word": 0.4}` (words of the target prompt, each with its own fraction
    or window); its steps are int(f * (steps + 1)), as the reference's `get_time_words_attention_alpha`
    (steps + 1 rows), while `self_replace` (a fraction or a window) counts int(f * steps). In a
    spec grid a window is written as a list inside the axis: `cross_replace: [[0.2, 0.8]]`.
    """

    cross_replace: Fraction | Window | dict[str, Fraction | Window] = Field(
        0.8, description="fraction (or window, or per word) of the steps with injected cross-attention"
    )
    self_replace: Fraction | Window = Field(0.4, description="fraction (or window) of the steps with injected self-attention")
    mode: Literal["auto", "replace", "refine"] = Field(
        "auto", description="word swap, refinement, or auto: swap when the word counts match"
    )
    reweight: dict[str, float] = Field(default_factory=dict, description="target-prompt word -> attention factor")
    local_blend: bool | Literal["when_given"] = Field(
        False,
        description="blend with the source outside the blended words' mask; 'when_given': only for samples "
        "whose meta has blended words, the others unblended (PIE-Bench's protocol)",
    )
    blend_threshold: float = Field(0.3, gt=0, lt=1, description="LocalBlend mask threshold")
    blend_start: float = Field(0.2, ge=0, le=1, description="fraction of steps before LocalBlend acts")
    control_uncond: bool = Field(False, description="also control the unconditional branch (P2Plus)")

    @model_validator(mode="after")
    def _ordered_windows(self) -> P2PParams:
        schedules = self.cross_replace.values() if isinstance(self.cross_replace, dict) else [self.cross_replace]
        for window in [*schedules, self.self_replace]:
            if isinstance(window, tuple) and window[0] > window[1]:
                raise ValueError(f"a (start, end) window needs start <= end, got {window}")
        return self


class GuidedP2PParams(P2PParams):
    """P2P controls plus the classifier-free guidance scale of the edit."""

    guidance: float = Field(7.5, ge=0, le=50, description="classifier-free guidance scale")


class P2PlusParams(P2PParams):
    """P2Plus (StyleDiffusion): P2P plus self-attention replacement in the unconditional branch."""

    uncond_self_replace: float = Field(
        0.0, ge=0, le=1, description="fraction of steps with injected self-attention in the unconditional branch"
    )


ValueInputs = Callable[[int, torch.Tensor], torch.Tensor]
"""(step counted from the loop's start, cond rows (R, L, D)) -> value inputs (R, L, D) of those rows."""


def p2p_edit(
    backbone: Backbone,
    samples: Sequence[Sample],
    points: Sequence[P2PParams],
    start_latents: torch.Tensor,
    schedule: Schedule,
    uncond: torch.Tensor,
    guidance: float | None = None,
    start: int = 0,
    source_trajectory: torch.Tensor | None = None,
    values: ValueInputs | None = None,
    advance: Advance | None = None,
    source_scale: float | None = None,
    sampler: Sampler | None = None,
) -> list[torch.Tensor]:
    """Edit every sample at every P2P point; one (B, 3, H, W) image tensor per point.

    `uncond` is (B, L, D), or (steps, B, L, D) for a per-step embedding. `guidance` overrides the
    points' own scale (Null-text's embeddings only hold for the scale they were tuned at).
    `source_trajectory` (steps + 1, B, ...) as returned by `ddim_invert` pins the source rows.
    `values` gives the cross-attention value inputs of the conditional rows at each step.
    `advance` replaces the DDIM step, `sampler` the whole step (calling the UNet itself, with the
    control active on every call: EDICT's coupled step) and `source_scale` the source rows'
    guidance (an inversion's sampler, diffusion/inverted.py).
    """
    by_scale: dict[float, list[int]] = {}
    for k, point in enumerate(points):
        scale = guidance if guidance is not None else getattr(point, "guidance", 7.5)
        by_scale.setdefault(float(scale), []).append(k)
    results: list[torch.Tensor | None] = [None] * len(points)
    for scale, indices in by_scale.items():
        _, targets = p2p_latents(
            backbone, samples, [points[k] for k in indices], start_latents, schedule, uncond, scale, start,
            source_trajectory, values, advance, source_scale, sampler,
        )  # fmt: skip
        for k, image in zip(indices, backbone.decode(targets).split(len(samples))):
            results[k] = image
    return results


def build_control(
    backbone: Backbone, samples: Sequence[Sample], points: Sequence[P2PParams], n_steps: int
) -> P2PControl:
    """The per-row controls for rows [samples; points x samples] (point-major target rows)."""
    tokenizer = backbone.tokenizer
    batch = len(samples)
    mappers, alphas, equalizers, cross, self_, uncond_self, blends = [], [], [], [], [], [], []
    length = tokenizer.model_max_length
    for point in points:
        for sample in samples:
            source, target = sample.source_prompt or "", sample.target_prompt
            mapper, alpha = _mapper(tokenizer, source, target, point.mode)
            equalizer = torch.ones(tokenizer.model_max_length)
            for word, factor in point.reweight.items():
                positions = word_positions(tokenizer, target, word)
                if not positions:
                    raise ValueError(f"reweight: the word {word!r} is not in the target prompt {target!r}")
                equalizer[positions] = factor
            mappers.append(mapper)
            alphas.append(alpha)
            equalizers.append(equalizer)
            cross.append(_cross_window(tokenizer, target, point.cross_replace, n_steps, length))
            self_.append(_steps(point.self_replace, n_steps))
            uncond_self.append(int(point.uncond_self_replace * n_steps) if isinstance(point, P2PlusParams) else 0)
            blends.append(_blend_words(tokenizer, sample, point, n_steps))
    control = P2PControl(
        n_source=batch,
        source_index=torch.arange(batch).repeat(len(points)),
        mapper=torch.stack(mappers).to(backbone.device),
        alphas=torch.stack(alphas).to(backbone.device),
        equalizer=torch.stack(equalizers).to(backbone.device),
        cross_from=torch.stack([c[0] for c in cross]).to(backbone.device),
        cross_steps=torch.stack([c[1] for c in cross]).to(backbone.device),
        self_from=torch.tensor([s[0] for s in self_], device=backbone.device),
        self_steps=torch.tensor([s[1] for s in self_], device=backbone.device),
        control_uncond=any(p.control_uncond for p in points),
        uncond_self_steps=torch.tensor(uncond_self, device=backbone.device) if any(uncond_self) else None,
    )
    if any(p.local_blend for p in points):
        src_words, tgt_words, thresholds, starts = (list(x) for x in zip(*blends))
        control.blend = LocalBlend(
            source_words=torch.stack(src_words).to(backbone.device),
            target_words=torch.stack(tgt_words).to(backbone.device),
            threshold=torch.tensor(thresholds, device=backbone.device),
            start_step=torch.tensor(starts, device=backbone.device),
            map_tokens=attention_map_tokens(backbone),
        )
    return control


def p2p_latents(
    backbone: Backbone,
    samples: Sequence[Sample],
    points: Sequence[P2PParams],
    start_latents: torch.Tensor,
    schedule: Schedule,
    uncond: torch.Tensor,
    scale: float,
    start: int = 0,
    source_trajectory: torch.Tensor | None = None,
    values: ValueInputs | None = None,
    advance: Advance | None = None,
    source_scale: float | None = None,
    sampler: Sampler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The controlled DDIM loop at one guidance scale: final (source (B), target (P*B)) latents."""
    batch, n_points = len(samples), len(points)
    n_steps = schedule.steps - start
    control = build_control(backbone, samples, points, n_steps)
    targets = backbone.encode_text(target_prompts(samples)).repeat(n_points, 1, 1)
    cond = torch.cat([backbone.encode_text(source_prompts(samples)), targets])
    uncond_rows = torch.cat([uncond] * (1 + n_points), dim=uncond.dim() - 3)
    x = torch.cat([start_latents.float()] * (1 + n_points))
    latent_hw = tuple(x.shape[-2:])
    rows_scale = scale if source_scale is None else torch.tensor([source_scale] * batch + [scale] * (len(x) - batch))
    with controlled_unet(backbone.unet, control):
        for i in range(start, schedule.steps):
            control.step = i - start
            a_from = schedule.alphas[i].item()
            step_uncond = uncond_rows[i] if uncond_rows.dim() == 4 else uncond_rows
            step_values = values(i - start, cond) if values is not None else None
            denoise = partial(
                predict_noise, backbone, t=schedule.timesteps[i], cond=cond, uncond=step_uncond,
                guidance=rows_scale, alpha=a_from, values=step_values,
            )  # fmt: skip
            x = sample_step(schedule, i, x, denoise, advance, sampler)
            if source_trajectory is not None:
                x[:batch] = source_trajectory[schedule.steps - i - 1].float()
            if control.blend is not None:
                x = _blend(x, control, latent_hw)
    x = x if sampler is None else sampler.latents(x)
    return x[:batch], x[batch:]


def _blend(x: torch.Tensor, control: P2PControl, latent_hw: tuple[int, int]) -> torch.Tensor:
    """LocalBlend: keep the source latent outside the edited words' mask (rows that asked for it)."""
    blend = control.blend
    mask = blend.mask(control.n_source, control.source_index, latent_hw).bool()
    active = (control.step >= blend.start_step).view(-1, 1, 1, 1)
    keep_target = mask | ~active
    source = x[: control.n_source][control.source_index]
    return torch.cat([x[: control.n_source], torch.where(keep_target, x[control.n_source :], source)])


def _mapper(tokenizer, source: str, target: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    length = tokenizer.model_max_length
    if source == target:
        return torch.eye(length), torch.ones(length)
    if mode == "replace" or (mode == "auto" and len(source.split()) == len(target.split())):
        return replace_mapper(tokenizer, source, target), torch.ones(length)
    return refine_mapper(tokenizer, source, target)


def _steps(schedule: float | tuple[float, float], n_steps: int) -> tuple[int, int]:
    """(first step, end step) of a fraction or a (start, end) window, int(f * n_steps) each."""
    start, end = schedule if isinstance(schedule, tuple) else (0.0, schedule)
    return int(start * n_steps), int(end * n_steps)


def _cross_window(
    tokenizer, target: str, schedule: float | tuple | dict, n_steps: int, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (first step, end step) of cross-attention replacement, (L,) each.

    The reference's rule: a step count of int(f * (steps + 1)); a per-word schedule overrides its
    words' tokens in the target prompt, "default_" (else the whole run) covers the others.
    """
    words = dict(schedule) if isinstance(schedule, dict) else {"default_": schedule}
    start, end = _steps(words.pop("default_", (0.0, 1.0)), n_steps + 1)
    first, last = torch.full((length,), start), torch.full((length,), end)
    for word, word_schedule in words.items():
        positions = word_positions(tokenizer, target, word)
        if not positions:
            raise ValueError(f"cross_replace: the word {word!r} is not in the target prompt {target!r}")
        first[positions], last[positions] = _steps(word_schedule, n_steps + 1)
    return first, last


def _blend_words(tokenizer, sample: Sample, point: P2PParams, n_steps: int) -> tuple:
    """Token masks of the blended words, threshold and start step (inactive rows never start)."""
    length = tokenizer.model_max_length
    src_mask, tgt_mask = torch.zeros(length), torch.zeros(length)
    if not point.local_blend:
        return src_mask, tgt_mask, point.blend_threshold, n_steps + 1
    words = sample.meta.get("blended_words")
    if not words and point.local_blend == "when_given":
        return src_mask, tgt_mask, point.blend_threshold, n_steps + 1
    if not words or len(words) != 2:
        raise ValueError(
            f"local_blend needs the sample's meta['blended_words'] = [source word, target word]; sample {sample.id!r} has {words!r}"
        )
    src_pos = word_positions(tokenizer, sample.source_prompt or "", words[0])
    tgt_pos = word_positions(tokenizer, sample.target_prompt, words[1])
    if not src_pos or not tgt_pos:
        raise ValueError(f"local_blend: blended words {words!r} not found in the prompts of sample {sample.id!r}")
    src_mask[src_pos] = 1.0
    tgt_mask[tgt_pos] = 1.0
    return src_mask, tgt_mask, point.blend_threshold, int(point.blend_start * n_steps)


def attention_map_tokens(backbone: Backbone) -> int:
    """Query count of the layers whose cross-attention maps P2P's LocalBlend and StyleDiffusion's
    attention loss use: 16x16 on SD at 512 px (latent / 4), or the coarsest attention resolution
    the UNet has when that does not exist."""
    latent_side = backbone.unet.config.sample_size
    levels = [i for i, name in enumerate(backbone.unet.config.down_block_types) if "CrossAttn" in name]
    sides = [latent_side // 2**i for i in levels]
    wanted = latent_side // 4
    side = wanted if wanted in sides else min(sides)
    return side * side
