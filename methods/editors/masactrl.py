"""`masactrl`: MasaCtrl, mutual self-attention control (Cao et al. 2023).

From `start_step` and `start_layer` on, the target rows' self-attention reads the keys and values
of their source row (diffusion/mutual_attention.py), keeping the input's content under a target
prompt that may change pose or layout. Defaults are the paper's and PIE-Bench's (step 4, layer
10 of SD's 16 transformer blocks, of 50 steps), after the reference code `TencentARC/MasaCtrl`
(`MutualSelfAttentionControl`). The layer is an absolute block index as there, so a UNet with
fewer blocks needs its own (`toy`: 7 blocks, its decoder from 3; `tiny`: 4, from 2): a start_layer
past the last block is refused rather than silently editing nothing.

`mask` turns on the reference's `MutualSelfAttentionControlMaskAuto`: foreground masks of the
source and the target from the cross-attention maps of their object tokens (token positions from
the params, default the first word as there, or the sample's meta['blended_words']) at the
reference's threshold 0.1 and its 16x16 maps on SD (latent / 4; the coarsest attention resolution on
a UNet without it), restricting each target query to the source's foreground or background.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import Annotated, Literal

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.attention import AttentionRecorder
from editsweep.diffusion.mutual_attention import ForegroundMasks, MutualControl, mutual_unet, transformer_block_order
from editsweep.diffusion.p2p import attention_map_tokens
from editsweep.diffusion.prompt_alignment import word_positions
from editsweep.diffusion.rows import by_scale, denoise_rows
from editsweep.methods.editors.base import Editor, register_editor


TokenPosition = Annotated[int, Field(ge=1, le=76)]


class MasaCtrlParams(Params):
    """Where mutual self-attention acts (it changes only the edit)."""

    start_step: int = Field(4, ge=0, le=1000, description="first denoising step with mutual self-attention")
    start_layer: int = Field(
        10, ge=0, le=1000, description="first transformer block (forward order; SD 1.x has 16) with it"
    )
    mask: bool = Field(False, description="restrict it to foreground/background by cross-attention masks (MaskAuto)")
    mask_threshold: float = Field(0.1, ge=0, le=1, description="threshold of the min-max normalised maps")
    mask_tokens: Literal["params", "blended_words"] = Field(
        "params", description="object tokens: the positions below, or the sample's meta['blended_words']"
    )
    mask_source_tokens: tuple[TokenPosition, ...] = Field(
        (1,), min_length=1, description="source-prompt token positions of the object (reference ref_token_idx)"
    )
    mask_target_tokens: tuple[TokenPosition, ...] = Field(
        (1,), min_length=1, description="target-prompt token positions of the object (reference cur_token_idx)"
    )


@register_editor
class MasaCtrlEditor(Editor):
    """Mutual self-attention editing of the inverted rows."""

    name = "masactrl"
    Params = MasaCtrlParams

    def edit(
        self,
        backbone: Backbone,
        inverted: Inverted,
        samples: Sequence[Sample],
        points: Sequence[MasaCtrlParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        n_blocks = len(transformer_block_order(backbone.unet))
        too_deep = sorted({p.start_layer for p in points if p.start_layer >= n_blocks})
        if too_deep:
            raise ValueError(
                f"masactrl start_layer {too_deep} is at or past the last of this UNet's {n_blocks} transformer "
                f"blocks (forward order), so mutual self-attention would never act; SD 1.x has 16 (the default 10 "
                f"leaves its last 6); set start_layer below {n_blocks}"
            )
        results: list[torch.Tensor | None] = [None] * len(points)
        for scale, indices in by_scale(guidance).items():
            chosen = [points[k] for k in indices]
            device = backbone.device
            control = MutualControl(
                n_source=batch,
                source_index=torch.arange(batch, device=device).repeat(len(chosen)),
                start_step=torch.tensor([p.start_step for p in chosen for _ in samples], device=device),
                start_layer=torch.tensor([p.start_layer for p in chosen for _ in samples], device=device),
                mask=_masks(backbone, samples, chosen) if any(p.mask for p in chosen) else None,
            )
            with mutual_unet(backbone.unet, control):
                _, targets = denoise_rows(backbone, inverted, samples, len(chosen), scale, control.begin_step)
            for k, image in zip(indices, backbone.decode(targets).split(batch), strict=True):
                results[k] = image
        return results


def _masks(backbone: Backbone, samples: Sequence[Sample], points: Sequence[MasaCtrlParams]) -> ForegroundMasks:
    """MaskAuto's per-row controls for target rows (point-major) of `points` x `samples`."""
    length = backbone.tokenizer.model_max_length
    rows = len(points) * len(samples)
    source_tokens, target_tokens = torch.zeros(rows, length), torch.zeros(rows, length)
    for row, (point, sample) in enumerate((p, s) for p in points for s in samples):
        if not point.mask:
            continue
        if point.mask_tokens == "params":
            source_tokens[row, list(point.mask_source_tokens)] = 1.0
            target_tokens[row, list(point.mask_target_tokens)] = 1.0
            continue
        words = sample.meta.get("blended_words")
        if not words or len(words) != 2:
            raise ValueError(
                f"masactrl mask_tokens 'blended_words' needs the sample's meta['blended_words'] = [source word, "
                f"target word]; sample {sample.id!r} has {words!r}"
            )
        source = word_positions(backbone.tokenizer, sample.source_prompt or "", words[0])
        target = word_positions(backbone.tokenizer, sample.target_prompt, words[1])
        if not source or not target:
            raise ValueError(f"masactrl mask: blended words {words!r} not found in the prompts of sample {sample.id!r}")
        source_tokens[row, source] = 1.0
        target_tokens[row, target] = 1.0
    device = backbone.device
    return ForegroundMasks(
        source_tokens=source_tokens.to(device),
        target_tokens=target_tokens.to(device),
        threshold=torch.tensor([p.mask_threshold for p in points for _ in samples], device=device),
        enabled=torch.tensor([p.mask for p in points for _ in samples], device=device),
        recorder=AttentionRecorder(map_tokens=attention_map_tokens(backbone)),
    )
