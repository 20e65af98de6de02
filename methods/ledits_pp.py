"""`ledits_pp`: LEDITS++ (Brack et al. 2024, "LEDITS++: Limitless Image Editing using Text-to-Image
Models"): edit-friendly DDPM inversion (diffusion/ddpm_inversion.py), then semantic guidance with
several edit concepts at once, each in its implicit mask (diffusion/ledits.py).

As diffusers' `LEditsPPPipelineStableDiffusion` with `DDIMScheduler` (`pipelines/ledits_pp/`,
`invert` and `__call__`) and its defaults: 30 inversion steps after skipping 15% of
int(30 * 1.15) = 34, eta 1, the empty source prompt (source guidance 3.5 then has no effect; with
`use_source_prompt` the sample's, as the pipeline's `source_prompt`), edit guidance 5, warm-up 0,
threshold 0.9, intersected masks with M2 from timestep 800. Concepts are the point's
`editing_prompt`, or the sample's: its target word added and its source word removed
(`sample_concepts`, from PIE-Bench's blended words or the prompts' differing words).

Two added parameters, at their defaults the above (so earlier task keys hold, core/params.py
`added_field`), for text encoders and UNets unlike SD's (measured on the toy world, BENCHMARKS.md):
- `concepts_from: prompts` reads the sample's concepts as whole captions: its target prompt added,
  its source prompt removed. Under equal scales and overlapping masks the two terms sum to
  s_e * (eps_target - eps_source), so what the captions share cancels and their difference acts. A
  text encoder trained on whole captions only (the toy's) puts a lone colour word's attention
  mostly off the object (M1 of the words' tokens: 10% of its cells on the object's mask, the
  captions' 81%).
- `m1_resolution` is the share of the latent side M1's maps are taken at: the reference's 1/4 (SD:
  16x16 maps of a 64x64 latent, a cell of 32 px) generalised; a UNet without cross-attention there
  falls back to its coarsest maps (`diffusion.ledits.mask_level`). The toy's 8x8 latent has maps at
  8x8 and 4x4 only, so 1/4 takes the 4x4 ones, whose cells (8 of its 32 px) are as large as its small
  objects (10 px) and straddle them; 1.0 takes the 8x8 ones.

A method of its own, not an editor on the inversions of methods/inversions/: its loop has no source
rows and no classifier-free scale (each concept has its own), which the `Editor` API assumes.

As the pipeline (and unlike the `ddpm` inversion, after the edit-friendly DDPM code) the last step's
noise map is solved too, so zero edit guidance lands on the input's latent exactly.

Deliberate differences from the pipeline (tests/methods/test_ledits_pp.py): M1 sums the maps of the
concept's own tokens, as the paper (the pipeline's token count comes from the tokenizer's padded
length, so it sums every token but the first and last); the M1 maps are at 1/4 of the latent side
when the UNet has cross-attention there (the pipeline's only choice), else at the closest level
(`diffusion.ledits.mask_level`), so small UNets run at their own resolution; a batch is any number of
images (the pipeline's masks and token counts assume one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator

from editsweep.core.params import KeepsTaskKeys, Params, added_field
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, make_schedule, predict_noise
from editsweep.diffusion.ddpm_inversion import ddpm_invert, ddpm_step
from editsweep.diffusion.inputs import images_tensor, source_prompts
from editsweep.diffusion.ledits import (
    ConceptMaps,
    Concepts,
    mask_level,
    recording_unet,
    sample_concepts,
    semantic_guidance,
)
from editsweep.methods.base import Method, State, register_method

ETA = 1.0  # the pipeline's DDIM inversion is edit-friendly DDPM's, eta 1


class LeditsInvertParams(Params):
    """What changes the inversion."""

    steps: int = Field(30, ge=1, le=1000, description="inversion (and editing) steps after the skipped ones")
    skip: float = Field(
        0.15, ge=0, le=1, description="skipped share: the schedule has int(steps * (1 + skip)) steps"
    )
    source_guidance: float = Field(
        3.5, ge=0, le=50, description="CFG scale of the source prompt while inverting (with use_source_prompt)"
    )
    use_source_prompt: bool = Field(
        False, description="invert under the sample's source prompt (False: the empty prompt, the reference's default)"
    )

    @property
    def total(self) -> int:
        """The schedule's steps, the first total - steps of which are skipped."""
        return int(self.steps * (1 + self.skip))

    def schedule(self, backbone: Backbone) -> Schedule:
        """The kept steps of the schedule."""
        full = make_schedule(backbone, self.total)
        return Schedule(timesteps=full.timesteps[-self.steps :], alphas=full.alphas[-self.steps - 1 :])


Floats = float | tuple[float, ...]
Ints = int | tuple[int, ...]


class LeditsEditParams(KeepsTaskKeys):
    """One edit point: its concepts and their controls (a value, or one per concept)."""

    editing_prompt: tuple[str, ...] = Field(
        (), description="edit concepts (empty: the sample's target word added, with remove_source its source word removed)"
    )
    reverse_editing_direction: tuple[bool, ...] = Field(
        (), description="per editing_prompt concept: remove it (empty: add all)"
    )
    remove_source: bool = Field(True, description="with the sample's concepts: remove its source word too")
    concepts_from: Literal["words", "prompts"] = added_field(
        "words",
        description="the sample's concepts: its changed words, or its whole target prompt added and "
        "(remove_source) its whole source prompt removed",
    )
    edit_guidance_scale: Floats = Field(5.0, description="s_e: guidance scale per concept, >= 0")
    edit_warmup_steps: Ints = Field(0, description="steps before a concept acts, >= 0")
    edit_cooldown_steps: Ints | None = Field(None, description="the step a concept stops at (None: never)")
    edit_threshold: Floats = Field(0.9, description="lambda: mask quantile per concept, in [0, 1]")
    mask: Literal["intersect", "attention", "noise"] = Field(
        "intersect",
        description="implicit mask: cross-attention (M1) and noise-estimate (M2) masks intersected, or one alone",
    )
    intersect_from: int = Field(800, ge=0, le=1000, description="M2 joins M1 at timesteps <= this (intersect)")
    m1_resolution: float = added_field(
        0.25,
        gt=0,
        le=1,
        description="M1's cross-attention maps at this share of the latent side (the reference's 1/4), "
        "else the UNet's coarsest maps (diffusion.ledits.mask_level)",
    )

    @model_validator(mode="after")
    def _per_concept(self) -> LeditsEditParams:
        n = len(self.editing_prompt) or 2
        where = "editing_prompt's concepts" if self.editing_prompt else "the sample's two concepts (added, removed)"
        if self.reverse_editing_direction and len(self.reverse_editing_direction) != len(self.editing_prompt):
            raise ValueError("reverse_editing_direction needs one value per editing_prompt concept")
        checks = {
            "edit_guidance_scale": (self.edit_guidance_scale, 0, 100),
            "edit_warmup_steps": (self.edit_warmup_steps, 0, 1000),
            "edit_cooldown_steps": (self.edit_cooldown_steps, 0, 1000),
            "edit_threshold": (self.edit_threshold, 0, 1),
        }
        for name, (value, low, high) in checks.items():
            values = value if isinstance(value, tuple) else () if value is None else (value,)
            if isinstance(value, tuple) and len(value) != n:
                raise ValueError(f"{name} has {len(value)} values for {where} ({n})")
            if any(not low <= v <= high for v in values):
                raise ValueError(f"{name} must be within [{low}, {high}]")
        return self

    def concepts(self, sample: Sample) -> list[tuple[str, bool, int]]:
        """(prompt, reversed, index into the per-concept values) of each concept of this point on `sample`."""
        if self.editing_prompt:
            reverse = self.reverse_editing_direction or (False,) * len(self.editing_prompt)
            return [(c, r, k) for k, (c, r) in enumerate(zip(self.editing_prompt, reverse, strict=True))]
        if self.concepts_from == "prompts":
            added, removed = sample.target_prompt, sample.source_prompt or None
        else:
            added, removed = sample_concepts(sample)
        return [(added, False, 0)] + ([(removed, True, 1)] if self.remove_source and removed else [])


def _value(value: float | tuple | None, k: int, default: float) -> float:
    if value is None:
        return default
    return value[k] if isinstance(value, tuple) else value


@register_method
class LeditsPP(Method):
    """Edit-friendly DDPM inversion, then LEDITS++'s masked semantic guidance per edit concept."""

    name = "ledits_pp"
    InvertParams = LeditsInvertParams
    EditParams = LeditsEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: LeditsInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        uncond = backbone.encode_text([""] * len(samples))
        if params.use_source_prompt:
            cond, guidance = backbone.encode_text(source_prompts(samples)), params.source_guidance
        else:  # the empty prompt: unguided (one UNet pass)
            cond, uncond, guidance = uncond, None, 1.0
        schedule = params.schedule(backbone)
        xts, zs = ddpm_invert(backbone, latents, schedule, cond, uncond, guidance, ETA, generators, solve_last=True)
        return {"start": xts[params.steps], "noise_maps": zs}

    @torch.no_grad()
    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: LeditsInvertParams,
        edit_params: Sequence[LeditsEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch, n_items = len(samples), len(edit_params) * len(samples)
        latent_side = state["start"].shape[-1]
        concepts, prompts = self._concepts(backbone, samples, edit_params, latent_side)
        embeds = torch.cat([backbone.encode_text([""] * n_items), backbone.encode_text(prompts)])
        schedule = invert_params.schedule(backbone)
        maps_needed = bool(concepts.attention.any())
        x = state["start"].float().repeat(len(edit_params), 1, 1, 1)
        noise_maps = state["noise_maps"].float().repeat(1, len(edit_params), 1, 1, 1)
        recorder = ConceptMaps(skip=n_items)
        levels = set(concepts.level[concepts.attention].tolist())
        with recording_unet(backbone.unet, recorder, levels):
            for i in range(schedule.steps):
                a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
                rows = torch.cat([x, x[concepts.item]])
                eps = predict_noise(backbone, rows, schedule.timesteps[i], embeds, alpha=a_from)
                maps = recorder.take() if maps_needed else None
                eps = semantic_guidance(eps[:n_items], eps[n_items:], maps, concepts, i, int(schedule.timesteps[i]))
                x = ddpm_step(x, eps, noise_maps[i], a_from, a_to, ETA)
        return list(backbone.decode(x).split(batch))

    @staticmethod
    def _concepts(
        backbone: Backbone, samples: Sequence[Sample], points: Sequence[LeditsEditParams], latent_side: int
    ) -> tuple[Concepts, list[str]]:
        """Every concept row of the batch (items point-major, then sample) and its prompt."""
        rows: list[tuple] = []
        for p, point in enumerate(points):
            attention, m2_from = Concepts.mask_controls(point.mask, point.intersect_from)
            level = -1 if point.mask == "noise" else mask_level(backbone.unet, latent_side, point.m1_resolution)
            for b, sample in enumerate(samples):
                for prompt, reverse, k in point.concepts(sample):
                    scale = _value(point.edit_guidance_scale, k, 0.0) * (-1 if reverse else 1)
                    warmup = int(_value(point.edit_warmup_steps, k, 0))
                    cooldown = int(_value(point.edit_cooldown_steps, k, 10**9))
                    threshold = _value(point.edit_threshold, k, 0.0)
                    rows.append(
                        (p * len(samples) + b, prompt, scale, warmup, cooldown, threshold, attention, m2_from, level)
                    )
        if not rows:
            raise ValueError("LEDITS++ needs at least one edit concept")
        item, prompts, scale, warmup, cooldown, threshold, attention, m2_from, level = zip(*rows, strict=True)
        return Concepts(
            item=torch.tensor(item),
            tokens=_concept_tokens(backbone, list(prompts)),
            scale=torch.tensor(scale),
            warmup=torch.tensor(warmup),
            cooldown=torch.tensor(cooldown),
            threshold=torch.tensor(threshold),
            attention=torch.tensor(attention),
            m2_from=torch.tensor(m2_from),
            level=torch.tensor(level),
        ), list(prompts)


def _concept_tokens(backbone: Backbone, prompts: list[str]) -> torch.Tensor:
    """(R, L) 0/1: each prompt's own tokens (after the start token, before the end token)."""
    length = backbone.tokenizer.model_max_length
    tokens = torch.zeros(len(prompts), length)
    for r, prompt in enumerate(prompts):
        n = len(backbone.tokenizer(prompt, truncation=True, max_length=length).input_ids) - 2
        tokens[r, 1 : 1 + n] = 1
    return tokens
