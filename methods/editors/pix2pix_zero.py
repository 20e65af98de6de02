"""`pix2pix_zero`: pix2pix-zero's editing (Parmar et al. 2023), diffusion/pix2pix_zero.py.

The target rows carry the source prompt's embedding plus an edit direction, the mean embedding of
target sentences minus that of source sentences, and are held to the source's structure by
cross-attention guidance: at every step an SGD step of size `xa_guidance` on their latent pulls
their cross-attention maps towards those the source rows (the reference pass) have at that step.
Sentences (`sentences`): `prompts`, each sample's source and target prompt (one sentence a side,
as PIE-Bench's pix2pix-zero runs, `cure-lab/PnPInversion`, `run_editing_pix2pix_zero.py`);
`words`, the sample's blended words (meta["blended_words"]) in each of `templates`; `files`, the
sentences of two text files, one per line (the paper's GPT-3 sentence lists,
`src/make_edit_direction.py`), the same direction for every sample.

Defaults are the paper's code's (`src/edit_real.py`): xa_guidance 0.1 (its `edit_synthetic.py`
uses 0.15), the source prompt as the target rows' negative prompt, CFG 5 (set `guidance: 5.0`
in the spec; PIE-Bench's runs use 7.5). The guidance loss sums over the maps' queries, so at the
toy world's 8x8 latents (64 times fewer queries than SD's 64x64) the same pull needs a larger
step: on 8 toy colour swaps xa_guidance 10 keeps 28.0 dB outside the edit, 0.1 only 20.0. The source rows retrace the input: under DDIM inversion
(or `p2pzero`) at guidance 1 with the source prompt, which is what the code's reference pass
computes (its negative prompt is the source prompt, so its CFG is the conditional prediction);
Null-text at its tuned scale, edit-friendly DDPM at its source scale, Direct inversion on its
trajectory. With `negative: inversion` the target rows take the inversion's unconditional
embedding (tuned null texts under Null-text) instead.

Every inversion works with it: nothing is refused. Against diffusers'
`StableDiffusionPix2PixZeroPipeline` (tests/diffusion/test_pix2pix_zero.py) the one difference
is the reference pass, which the pipeline samples at the edit's scale with its negative prompt;
with the source prompt as negative prompt (this default) both are the conditional prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inputs import source_prompts, target_prompts
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.pix2pix_zero import edit_direction, xa_guided_rows
from editsweep.methods.editors.base import Editor, register_editor

if TYPE_CHECKING:
    from editsweep.methods.inversions.base import Inversion


def read_sentences(path: str) -> list[str]:
    """The non-empty lines of a text file, stripped: one sentence each."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class Pix2PixZeroParams(Params):
    """The edit direction and the cross-attention guidance (they change only the edit)."""

    xa_guidance: float = Field(
        0.1,
        ge=0,
        le=100,
        description="cross-attention guidance: SGD step size on the latent (0: direction only; the loss sums over "
        "queries, so smaller latents need more: toy 10)",
    )
    sentences: Literal["prompts", "words", "files"] = Field(
        "prompts", description="edit direction from the prompts, the blended words in templates, or two text files"
    )
    templates: tuple[str, ...] = Field(
        ("a photo of a {}",), min_length=1, description="sentences: words - each blended word in each of these"
    )
    source_file: str | None = Field(None, description="sentences: files - source sentences, one per line")
    target_file: str | None = Field(None, description="sentences: files - target sentences, one per line")
    negative: Literal["source", "inversion"] = Field(
        "source", description="target rows' unconditional embedding: the source prompt (paper) or the inversion's"
    )

    @model_validator(mode="after")
    def _check_sentences(self) -> Pix2PixZeroParams:
        files = {"source_file": self.source_file, "target_file": self.target_file}
        if self.sentences != "files":
            given = [k for k, v in files.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} is read only with sentences: files (got sentences: {self.sentences})")
        else:
            for key, path in files.items():
                if path is None:
                    raise ValueError(f"sentences: files needs {key}, a text file with one sentence per line")
                if not Path(path).is_file():
                    raise ValueError(f"{key} {path!r} is not a file")
                if not read_sentences(path):
                    raise ValueError(f"{key} {path!r} holds no sentence (one per line)")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"templates must hold '{{}}' (the word) once each: {bad}")
        return self


@register_editor
class Pix2PixZeroEditor(Editor):
    """pix2pix-zero editing of the inverted rows."""

    name = "pix2pix_zero"
    Params = Pix2PixZeroParams

    @classmethod
    def refuses(cls, inversion: type[Inversion]) -> str | None:
        if inversion.calls_denoiser:
            return (
                "its cross-attention guidance moves the target latents between UNet calls, while "
                f"{inversion.name}'s step calls the denoiser itself on a state of its own; use an inversion "
                "with a one-call step (ddim, direct, null_text, negative_prompt, ddpm, p2pzero)"
            )
        return None

    def edit(
        self,
        backbone: Backbone,
        inverted: Inverted,
        samples: Sequence[Sample],
        points: Sequence[Pix2PixZeroParams],
        guidance: Sequence[float],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch, device = len(samples), backbone.device
        source_cond = backbone.encode_text(source_prompts(samples))
        directions = torch.cat([directions_of(backbone, samples, p) for p in points])  # (P * B, L, D)
        target_cond = (source_cond.float().repeat(len(points), 1, 1) + directions).to(source_cond.dtype)

        def per_row(values: list) -> torch.Tensor:
            return torch.tensor([v for v in values for _ in samples], device=device)

        _, targets = xa_guided_rows(
            backbone,
            inverted,
            source_cond,
            target_cond,
            negative_source=per_row([p.negative == "source" for p in points]),
            xa_guidance=per_row([p.xa_guidance for p in points]),
            guidance=per_row([float(g) for g in guidance]),
        )
        return list(backbone.decode(targets).split(batch))


def directions_of(backbone: Backbone, samples: Sequence[Sample], params: Pix2PixZeroParams) -> torch.Tensor:
    """(B, L, D) float32: each sample's edit direction under one point's `sentences`."""
    if params.sentences == "files":
        direction = edit_direction(backbone, read_sentences(params.source_file), read_sentences(params.target_file))
        return direction.expand(len(samples), *direction.shape)
    if params.sentences == "prompts":
        pairs = [([s], [t]) for s, t in zip(source_prompts(samples), target_prompts(samples), strict=True)]
    else:
        pairs = []
        for sample in samples:
            words = sample.meta.get("blended_words")
            if not (isinstance(words, (list, tuple)) and len(words) == 2):
                raise ValueError(
                    f"pix2pix_zero sentences: words needs the sample's meta['blended_words'] = [source word, target "
                    f"word]; sample {sample.id!r} has {words!r} (use sentences: prompts)"
                )
            pairs.append(tuple([t.format(w) for t in params.templates] for w in words))
    return torch.stack([edit_direction(backbone, source, target) for source, target in pairs])
