"""LEDITS++'s semantic guidance (Brack et al. 2024, "LEDITS++: Limitless Image Editing using
Text-to-Image Models", eq. 12): several edit concepts at once, each steering the unconditional noise
estimate inside its own implicit mask.

After diffusers' `LEditsPPPipelineStableDiffusion` (`pipelines/ledits_pp/pipeline_leditspp_stable_diffusion.py`,
`__call__`): concept c's term is s_c * (eps_c - eps_u) (negated for a removal), from warm-up step on and
before its cool-down step, multiplied by a mask: M1, the cross-attention maps of the concept's tokens
(mean over the heads and down/up layers at 1/4 of the latent side, or another share: `mask_level`;
summed over the tokens, smoothed by a 3x3 Gaussian, above their `threshold` quantile), intersected
with M2 (the channel-summed magnitude of the term above its `threshold` quantile) at timesteps <=
`intersect_from` (the reference's 800), or either alone.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torchvision.transforms.v2.functional import gaussian_blur

from editsweep.datasets.base import Sample
from editsweep.diffusion.attention import P2PAttnProcessor

# The reference's 3x3 smoothing kernel is exp(-((x - mean) / (2 * 0.5))^2): torchvision's Gaussian
# exp(-x^2 / (2 sigma^2)) at sigma 1/sqrt(2), with the same reflect padding.
SMOOTHING_SIGMA = 2**-0.5


def sample_concepts(sample: Sample) -> tuple[str, str | None]:
    """(the concept to add, the one to remove or None) of a sample: its blended words [source,
    target] where the dataset has them (PIE-Bench, shapes), else the words of the target prompt that
    differ from the source prompt and those they replace (the whole target prompt if none differ)."""
    words = sample.meta.get("blended_words")
    if words is not None and len(words) == 2 and words[1]:
        return words[1], words[0] or None
    source, target = (sample.source_prompt or "").split(), sample.target_prompt.split()
    added, removed = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, source, target, autojunk=False).get_opcodes():
        if tag != "equal":
            added += target[j1:j2]
            removed += source[i1:i2]
    return (" ".join(added) or sample.target_prompt), (" ".join(removed) or None)


def mask_level(unet: UNet2DConditionModel, latent_side: int, resolution: float = 0.25) -> int:
    """The UNet level (0: the latent's resolution, each level half the previous) whose
    cross-attention maps make M1: the finest level at or below `resolution` x the latent side (the
    reference's 1/4: SD's 16x16 maps of a 64x64 latent) where a down or up block has cross-attention,
    else the coarsest level there is (small UNets: tiny's maps are all at the latent's side; the toy's
    8x8 latent has none at 2x2, so 1/4 falls back to its 4x4 maps, while 1.0 takes its 8x8 ones)."""
    levels = sorted(level for name in unet.attn_processors if (level := _level(unet, name)) is not None)
    if not levels:
        raise ValueError("LEDITS++ needs cross-attention in the UNet's down or up blocks")
    at_or_below = [lv for lv in levels if latent_side >> lv <= latent_side * resolution]
    return min(at_or_below) if at_or_below else max(levels)


def _level(unet: UNet2DConditionModel, name: str) -> int | None:
    """The level of a down/up block's cross-attention processor, None for any other processor."""
    parts = name.split(".")
    if "attn2" not in parts or parts[0] not in ("down_blocks", "up_blocks"):
        return None
    block = int(parts[1])
    return block if parts[0] == "down_blocks" else len(unet.config.up_block_types) - 1 - block


@dataclass
class ConceptMaps:
    """Records the cross-attention maps (rows past the first `skip`, every head) of the layers it is
    installed on, for one UNet call at a time, by resolution (number of queries)."""

    skip: int
    maps: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def __call__(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        self.maps.setdefault(probs.shape[-2], []).append(probs[self.skip :])
        return probs

    def take(self) -> dict[int, torch.Tensor]:
        """Per number of queries, (rows, queries, keys): the mean over the layers and heads recorded
        at that resolution; forgets them."""
        maps, self.maps = self.maps, {}
        return {queries: torch.cat(layers, dim=1).mean(1) for queries, layers in maps.items()}


@contextlib.contextmanager
def recording_unet(unet: UNet2DConditionModel, recorder: ConceptMaps, levels: Collection[int]) -> Iterator[None]:
    """The UNet with `recorder` on the cross-attention of the down/up blocks at `levels` (the rest
    keeps its processors) for the duration of a block."""
    original = unet.attn_processors
    unet.set_attn_processor(
        {name: P2PAttnProcessor(recorder) if _level(unet, name) in levels else proc for name, proc in original.items()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(original)


# Where each mask uses M2 (the term's magnitude): at timesteps <= this (M1 alone at larger ones).
M2_ALWAYS, M2_NEVER = 10**9, -1


@dataclass(frozen=True)
class Concepts:
    """The concept rows of one denoising batch and their controls, one entry per row."""

    item: torch.Tensor  # (R,) long: the edit item (unconditional row) each concept row belongs to
    tokens: torch.Tensor  # (R, L) 0/1: the concept's own tokens in its prompt
    scale: torch.Tensor  # (R,) signed: negative for a removal
    warmup: torch.Tensor  # (R,) long: first step the concept acts at
    cooldown: torch.Tensor  # (R,) long: the step it stops at
    threshold: torch.Tensor  # (R,) quantile of its masks
    attention: torch.Tensor  # (R,) bool: M1 (cross-attention) is part of its mask
    m2_from: torch.Tensor  # (R,) long: M2 is part of its mask at timesteps <= this
    level: torch.Tensor  # (R,) long: the UNet level of the maps its M1 uses (`mask_level`; -1: no M1)

    @staticmethod
    def mask_controls(mask: str, intersect_from: int) -> tuple[bool, int]:
        """(uses M1, M2 from timestep) of a mask: intersect (M1 and M2), attention (M1), noise (M2)."""
        return {
            "intersect": (True, intersect_from),
            "attention": (True, M2_NEVER),
            "noise": (False, M2_ALWAYS),
        }[mask]


def semantic_guidance(
    eps_uncond: torch.Tensor,
    eps_concepts: torch.Tensor,
    maps: dict[int, torch.Tensor] | None,
    concepts: Concepts,
    step: int,
    timestep: int,
) -> torch.Tensor:
    """eps_u + the masked sum of the concepts' terms, one row per edit item.

    `eps_uncond` (E, C, h, w); `eps_concepts` (R, C, h, w); `maps` per number of queries (R, queries,
    keys), the concept rows' head- and layer-averaged cross-attention at that resolution, each row's
    M1 from those at its `concepts.level` (None when no row uses M1).
    """
    base = eps_uncond[concepts.item]
    terms = (eps_concepts - base) * concepts.scale.view(-1, 1, 1, 1).to(base)
    hw = terms.shape[2:]
    mask = torch.ones_like(terms)
    for level in concepts.level[concepts.attention].unique().tolist():
        rows = (concepts.level == level) & concepts.attention
        side = tuple(-(-n // 2**level) for n in hw)  # a UNet level rounds odd sides up
        mask[rows.to(terms.device)] = _attention_mask(maps[side[0] * side[1]][rows], concepts, rows, side, hw).to(terms)
    m2_rows = timestep <= concepts.m2_from
    if bool(m2_rows.any()):
        m2 = _above_quantile(terms.abs().sum(1).flatten(1), concepts.threshold).view(-1, 1, *hw).to(terms)
        mask = torch.where(m2_rows.view(-1, 1, 1, 1).to(terms.device), mask * m2, mask)
    active = (concepts.warmup <= step) & (step < concepts.cooldown)
    terms = terms * mask * active.view(-1, 1, 1, 1).to(terms)
    return eps_uncond + torch.zeros_like(eps_uncond).index_add_(0, concepts.item.to(terms.device), terms)


def _attention_mask(
    maps: torch.Tensor, concepts: Concepts, rows: torch.Tensor, side: tuple[int, int], hw: torch.Size
) -> torch.Tensor:
    """M1 of the concept `rows` from their maps (rows, queries, keys) of `side` (h, w), nearest-upsampled to `hw`."""
    attention = (maps.float() * concepts.tokens[rows, None].to(maps.device)).sum(-1).view(-1, 1, *side)
    attention = gaussian_blur(attention, [3, 3], [SMOOTHING_SIGMA] * 2)
    m1 = _above_quantile(attention.flatten(1), concepts.threshold[rows]).view(-1, 1, *side).float()
    return F.interpolate(m1, size=hw)


def _above_quantile(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row: values >= the row's q-quantile (torch.quantile's linear interpolation, as the reference)."""
    return torch.stack([row >= torch.quantile(row.float(), float(qr)) for row, qr in zip(values, q, strict=True)])
