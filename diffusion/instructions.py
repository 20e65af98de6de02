"""The edit instruction of a sample, for instruction editors (methods/instruct_pix2pix.py,
methods/flux_kontext.py, methods/qwen_image_edit.py): the sample's `meta["instruction"]` (MagicBrush, InstructPix2Pix data)
or `meta["editing_instruction"]` (PIE-Bench) when present, else a template filled from the
prompts: the words that change (the sample's blended words, else the prompts' differing words, as
diffusion/ledits.py's `sample_concepts`).
"""

from __future__ import annotations

from string import Formatter
from typing import Literal

from pydantic import Field, field_validator

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.ledits import sample_concepts

TEMPLATE_FIELDS = ("source_prompt", "target_prompt", "source_word", "target_word")
META_KEYS = ("instruction", "editing_instruction")


class InstructionParams(Params):
    """Where an instruction editor's instruction comes from (a base of its edit params)."""

    instruction: Literal["auto", "template"] = Field(
        "auto",
        description="auto: the sample's meta['instruction'] or meta['editing_instruction'] when present, "
        "else the template; template: always the template",
    )
    template: str = Field(
        "turn the {source_word} into {target_word}",
        description="instruction when the edit replaces words; fields: " + ", ".join(TEMPLATE_FIELDS),
    )
    template_add: str = Field(
        "make it {target_prompt}", description="instruction when no word of the source is replaced (same fields)"
    )

    @field_validator("template", "template_add")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        fields = {name for _, name, _, _ in Formatter().parse(value) if name is not None}
        if unknown := fields - set(TEMPLATE_FIELDS):
            raise ValueError(f"unknown template fields {sorted(unknown)}; known: {', '.join(TEMPLATE_FIELDS)}")
        return value


def instruction(sample: Sample, params: InstructionParams) -> str:
    """The edit instruction of a sample: from its meta, or the params' template (module docstring)."""
    if params.instruction == "auto":
        for key in META_KEYS:
            if text := sample.meta.get(key):
                return str(text)
    added, removed = sample_concepts(sample)
    fields = dict(
        source_prompt=sample.source_prompt or "", target_prompt=sample.target_prompt, source_word=removed or "",
        target_word=added,
    )
    return (params.template if removed else params.template_add).format(**fields)
