"""`infedit`: inversion-free image editing (InfEdit, Xu et al. 2024, "Inversion-Free Image Editing
with Natural Language"), after the reference code `sled-group/InfEdit` (`pipeline_ead.py`,
`app_infedit.py`, its PIE-Bench settings in `run_pie_bench.py`).

Denoising Diffusion Consistent Model sampling (diffusion/ddcm.py) replaces inversion: the source
branch is the input's latent re-noised at each step with the step's fresh noise, so its noise is
known in closed form, and the target and mutual branches predict their clean latents relative to it.
Unified attention control (diffusion/unified_attention.py) ties the branches: P2P's cross-attention
control (prompt alignment of diffusion/prompt_alignment.py), P2P's self-attention replacement
then MasaCtrl's mutual self-attention, and a local blend that keeps the target's latent inside the
mask of its blended word and the mutual branch's elsewhere. The image is the target's predicted
clean latent at the last step.

A standalone method, not an (inversion, editor) pair: there is no inversion to share, and the
editor needs the clean latent and a third (mutual) branch per edit, which the `Inverted` of
diffusion/inverted.py does not carry. `invert` only encodes the image.

Backbone: the reference runs on a latent consistency model (LCM Dreamshaper v7, LCMScheduler);
on Stable Diffusion the paper's DDCM sampler runs on the backbone's DDIM timesteps
(diffusion/ddim.py `make_schedule`), which is what we do on every backbone. Defaults are the
reference's PIE-Bench run (12 steps, source guidance 1, target guidance 2.3, cross and self
control 0.7, blend threshold 0.55 on the target's blended word, rows starting from pure noise).
Differences: the prompt alignment is P2P's (word swap for prompts of equal word count, else
refinement), where the reference's refinement additionally maps each unaligned target token to the
most text-embedding-similar source token of its gap (the same pairing for a swapped word);
positive/negative prompts are the empty prompt, as there.

The reference's source blend ("mutual" words, `thresh_m`; its demo's "Source blend", e.g. the main
object of a background edit) comes from `sample.meta["mutual_words"]` (words of both prompts):
after every step but the first, where the source rows' maps of the mutual words that are not
also target blend words pass `mutual_threshold`, the target row takes the source branch's latent
(the input re-noised, so that region stays the input's); and after the second-to-last step, where
the mutual rows' maps of the words that are both mutual and target blend words pass
`blend_threshold`, it takes the mutual branch's (the reference's `use_xm`, e.g. "dog" for "a dog"
-> "a running dog": the dog follows its source). PIE-Bench has no such words (the reference's run
passes none); samples without them are unchanged (`mutual_blend: when_given`). `mutual_blend` and
`mutual_threshold` are left out of the task key at their defaults (core/params.py `added_field`),
so earlier runs keep their keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from editsweep.core.params import KeepsTaskKeys, Params, added_field
from editsweep.datasets.base import Sample
from editsweep.diffusion.attention import LocalBlend, P2PControl
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddcm import ddcm_clean, ddcm_noised
from editsweep.diffusion.ddim import make_schedule, predict_noise
from editsweep.diffusion.inputs import source_prompts, target_prompts
from editsweep.diffusion.p2p import P2PParams, attention_map_tokens, build_control
from editsweep.diffusion.prompt_alignment import word_positions
from editsweep.diffusion.unified_attention import UnifiedControl, unified_unet
from editsweep.methods.base import EncodesInput, State, register_method


class InfEditParams(KeepsTaskKeys):
    """One edit point (nothing is inverted, so every parameter is an edit parameter)."""

    steps: int = Field(12, ge=1, le=1000, description="DDCM steps on the backbone's DDIM timesteps")
    guidance: float = Field(2.3, ge=0, le=50, description="CFG scale of the target branch")
    source_guidance: float = Field(1.0, ge=0, le=50, description="CFG scale of the source and mutual branches")
    cross_replace: float = Field(
        0.7, ge=0, le=1, description="cross-attention control while (step + 1) / steps <= this fraction"
    )
    self_replace: float = Field(
        0.7, ge=0, le=1, description="self-attention control while (step + 1) / steps < this, mutual after"
    )
    mode: Literal["auto", "replace", "refine"] = Field(
        "auto", description="prompt alignment: word swap, refinement, or auto (swap when the word counts match)"
    )
    local_blend: bool | Literal["when_given"] = Field(
        "when_given",
        description="blend inside the mask of the target's blended word (meta['blended_words'][1]); "
        "'when_given': only for samples that have one",
    )
    blend_threshold: float = Field(0.55, ge=0, le=1, description="threshold of the blend mask (thresh_e)")
    blend_temperature: float = Field(
        0.15, ge=0, le=10, description="the threshold is at least this / sqrt(alpha-bar_t) at step t"
    )
    mutual_blend: bool | Literal["when_given"] = added_field(
        "when_given",
        description="keep the source branch inside the source maps' mask of meta['mutual_words'] (the "
        "reference's source blend); 'when_given': only for samples that have them",
    )
    mutual_threshold: float = added_field(
        0.6, ge=0, le=1, description="threshold of the source blend mask (thresh_m; the reference's 0.6)"
    )
    start: Literal["noise", "noised_source"] = Field(
        "noise",
        description="rows start from pure noise (reference denoise_model=False) or from the input noised "
        "to the first timestep",
    )


@register_method
class InfEdit(EncodesInput):
    """DDCM virtual inversion with unified attention control."""

    name = "infedit"
    EditParams = InfEditParams

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[InfEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        groups: dict[tuple, list[int]] = {}
        for k, point in enumerate(edit_params):
            groups.setdefault((point.steps, point.source_guidance, point.start), []).append(k)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for indices in groups.values():
            points = [edit_params[k] for k in indices]
            latents = infedit_latents(backbone, samples, points, state["latents"], generators)
            for k, image in zip(indices, backbone.decode(latents).split(len(samples)), strict=True):
                results[k] = image
        return results


@torch.no_grad()
def infedit_latents(
    backbone: Backbone,
    samples: Sequence[Sample],
    points: Sequence[InfEditParams],
    clean: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """The edited clean latents (P*B, C, h, w), point-major, of points sharing steps, source guidance
    and start (they share the source rows and the noise)."""
    batch, n_points, device = len(samples), len(points), backbone.device
    steps, first = points[0].steps, points[0]
    schedule = make_schedule(backbone, steps)
    clean = clean.float()
    t = n_points * batch

    def draw() -> torch.Tensor:
        """One noise map per sample from its own generator: the same for all of its rows."""
        noise = torch.stack([torch.randn(clean.shape[1:], generator=g) for g in generators])
        return noise.to(device).repeat(1 + 2 * n_points, 1, 1, 1)

    rows = 1 + 2 * n_points
    noise = draw()
    row_clean = clean.repeat(rows, 1, 1, 1)
    x = noise if first.start == "noise" else ddcm_noised(row_clean, noise, schedule.alphas[0].item())
    source_text = backbone.encode_text(source_prompts(samples)).repeat(1 + n_points, 1, 1)
    targets = backbone.encode_text(target_prompts(samples)).repeat(n_points, 1, 1)
    cond = torch.cat([source_text[:batch], targets, source_text[batch:]])
    uncond = backbone.encode_text([""] * batch).repeat(rows, 1, 1)
    target_guidance = [p.guidance for p in points for _ in samples]
    guidance = torch.tensor([first.source_guidance] * batch + target_guidance + [first.source_guidance] * t)
    control = _control(backbone, samples, points, steps)
    words = _blend_words(backbone, samples, points)
    mutual = _mutual_words(backbone, samples, points)
    source_only, both = mutual * (1 - words), mutual * words  # the reference's alpha_m - alpha_me, alpha_me
    mutual_thresholds = torch.tensor([p.mutual_threshold for p in points for _ in samples], device=device)
    thresholds = torch.tensor([p.blend_threshold for p in points for _ in samples], device=device)
    temperatures = torch.tensor([p.blend_temperature for p in points for _ in samples], device=device)
    with unified_unet(backbone.unet, control):
        for i in range(steps):
            control.step = control.cross.step = i
            alpha, alpha_next = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
            eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, guidance, alpha=alpha)
            x_source, eps_source = x[:batch].repeat(rows, 1, 1, 1), eps[:batch].repeat(rows, 1, 1, 1)
            predicted = ddcm_clean(x, eps, x_source, eps_source, row_clean, alpha)
            x = ddcm_noised(predicted, draw(), alpha_next)
            if i > 0 and control.blend is not None:
                # the reference's LocalBlend, after every step but the first
                threshold = torch.maximum(temperatures / alpha**0.5, thresholds)
                hw = tuple(x.shape[-2:])
                keep = control.blend_mask(words, threshold, hw) | ~words.bool().any(1).view(-1, 1, 1, 1)
                blended = torch.where(keep, x[batch : batch + t], x[batch + t :])
                from_source = control.blend_mask(source_only, mutual_thresholds, hw, source=True)
                blended = torch.where(from_source, x[:batch].repeat(n_points, 1, 1, 1), blended)
                if i == steps - 2:  # the reference's use_xm: its step counter is one ahead at the callback
                    blended = torch.where(control.blend_mask(both, thresholds, hw), x[batch + t :], blended)
                x[batch : batch + t] = blended
    return predicted[batch : batch + t]


def _control(
    backbone: Backbone, samples: Sequence[Sample], points: Sequence[InfEditParams], steps: int
) -> UnifiedControl:
    """UAC's per-row controls for rows [sources; targets; mutuals] (targets and mutuals point-major)."""
    batch, device = len(samples), backbone.device
    t = len(points) * batch
    # P2P's prompt alignment of every (point, sample); the windows are InfEdit's, set below
    aligned = build_control(backbone, samples, [P2PParams(mode=p.mode) for p in points], steps)
    length = aligned.mapper.shape[-1]
    cross_steps = [sum((i + 1) / steps <= p.cross_replace for i in range(steps)) for p in points for _ in samples]
    self_steps = [sum((i + 1) / steps < p.self_replace for i in range(steps)) for p in points for _ in samples]
    cross = P2PControl(
        n_source=batch,
        source_index=torch.arange(batch, device=device).repeat(2 * len(points)),
        mapper=torch.cat([aligned.mapper, torch.eye(length, device=device).expand(t, length, length)]),
        alphas=torch.cat([aligned.alphas, torch.ones(t, length, device=device)]),
        equalizer=torch.ones(2 * t, length, device=device),
        cross_steps=torch.tensor(cross_steps + [0] * t, device=device),
        self_steps=torch.zeros(2 * t, dtype=torch.long, device=device),
    )
    blend = any(p.local_blend or p.mutual_blend for p in points)
    return UnifiedControl(
        n_source=batch,
        source_index=torch.arange(batch, device=device).repeat(len(points)),
        self_steps=torch.tensor(self_steps, device=device),
        cross=cross,
        # P2P's LocalBlend as the accumulator of maps (its own mask rule is not InfEdit's: blend_mask)
        blend=LocalBlend(
            source_words=torch.zeros(0), target_words=torch.zeros(0), threshold=torch.zeros(0),
            start_step=torch.zeros(0), map_tokens=attention_map_tokens(backbone),
        ) if blend else None,
    )  # fmt: skip


def _blend_words(backbone: Backbone, samples: Sequence[Sample], points: Sequence[InfEditParams]) -> torch.Tensor:
    """(T, L) 0/1: the target-prompt tokens of each row's blended word (none where it does not blend)."""
    length = backbone.tokenizer.model_max_length
    words = torch.zeros(len(points) * len(samples), length)
    for row, (point, sample) in enumerate((p, s) for p in points for s in samples):
        blended = sample.meta.get("blended_words")
        if not point.local_blend or (not blended and point.local_blend == "when_given"):
            continue
        if not blended or len(blended) != 2:
            raise ValueError(
                f"infedit local_blend needs the sample's meta['blended_words'] = [source word, target word]; "
                f"sample {sample.id!r} has {blended!r}"
            )
        positions = word_positions(backbone.tokenizer, sample.target_prompt, blended[1])
        if not positions:
            raise ValueError(f"infedit local_blend: {blended[1]!r} is not in the target prompt of sample {sample.id!r}")
        words[row, positions] = 1.0
    return words.to(backbone.device)


def _mutual_words(backbone: Backbone, samples: Sequence[Sample], points: Sequence[InfEditParams]) -> torch.Tensor:
    """(T, L) 0/1: the target-prompt tokens of each row's mutual words (meta['mutual_words']; none
    where the row does not use them). Each must be a word of both prompts, as the reference requires."""
    length = backbone.tokenizer.model_max_length
    words = torch.zeros(len(points) * len(samples), length)
    for row, (point, sample) in enumerate((p, s) for p in points for s in samples):
        mutual = sample.meta.get("mutual_words")
        if not point.mutual_blend or (not mutual and point.mutual_blend == "when_given"):
            continue
        if not mutual or isinstance(mutual, str):
            raise ValueError(
                f"infedit mutual_blend needs the sample's meta['mutual_words'] = [word, ...] (words of both "
                f"prompts), or mutual_blend: when_given; sample {sample.id!r} has {mutual!r}"
            )
        for word in mutual:
            positions = word_positions(backbone.tokenizer, sample.target_prompt, word)
            if not positions or not word_positions(backbone.tokenizer, sample.source_prompt or "", word):
                raise ValueError(
                    f"infedit mutual_blend: {word!r} of meta['mutual_words'] must be in both prompts of sample "
                    f"{sample.id!r} ({sample.source_prompt!r} -> {sample.target_prompt!r})"
                )
            words[row, positions] = 1.0
    return words.to(backbone.device)
