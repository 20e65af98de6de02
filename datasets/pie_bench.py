"""PIE-Bench (PnP Inversion, Ju et al. 2023): 700 images, 10 edit types, prompts, blended words, edit masks.

Expected layout under `root` (the unzipped `PIEbench.zip` of the PnPInversion README's form):

    mapping_file.json
    annotation_images/<k>_<type>_<n>/.../<12-digit id>.jpg

`mapping_file.json` maps each 12-digit id to `image_path` (relative to `annotation_images/`),
`original_prompt`, `editing_prompt`, `editing_instruction`, `editing_type_id` ("0".."9"),
`blended_word` ("source target", or "") and `mask` (run-length, see `mask_decode`).

What is copied from the official scripts (cure-lab/PnPInversion `run_editing_p2p.py`,
`evaluation/evaluate.py`), quirks included:
- prompts are cleaned by deleting the characters "[" and "]" only (the marked words stay in the
  prompt); the marked words are kept in meta as `source_marked` / `target_marked`;
- `blended_word` is split on single spaces; two words become meta["blended_words"] =
  [source word, target word] (the key `diffusion/p2p.py` reads for LocalBlend); an empty one gives none;
- the mask is decoded as the official `mask_decode`: [start, length] pairs over the 512x512
  row-major pixels, a run clipped at the end of the image, then the 1-pixel border set to 1
  ("to avoid annotation errors in boundary"). It lands in meta["mask"], (512, 512) bool, 1 = edit.

Each entry is checked when its sample loads (`load`): a malformed entry, or one whose image path
leads outside `annotation_images/` (see `datasets/entries.py`), fails only its own sample.

Research-use data; cite Ju et al. 2023 (PnP Inversion / PIE-Bench).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from editsweep.datasets.base import Dataset, DatasetError, DatasetParams, Sample, register_dataset
from editsweep.datasets.entries import resolve_inside, validate_entry
from editsweep.datasets.images import load_rgb

MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
MASK_SHAPE = (512, 512)
EDIT_TYPES: dict[int, str] = {
    0: "random",
    1: "change_object",
    2: "add_object",
    3: "delete_object",
    4: "change_attribute_content",
    5: "change_attribute_pose",
    6: "change_attribute_color",
    7: "change_attribute_material",
    8: "change_background",
    9: "change_style",
}
_MARKED = re.compile(r"\[([^\]]*)\]")
# An editing_type_id: "0".."9" in the published file (pydantic's lax mode reads a numeric string as an int).
EditType = Annotated[int, Field(ge=0, le=9)]
_EDIT_TYPE: TypeAdapter[int] = TypeAdapter(EditType)


def mask_decode(encoded: Sequence[int], shape: tuple[int, int] = MASK_SHAPE) -> np.ndarray:
    """The official PIE-Bench mask decoder: (H, W) bool, True = region to edit.

    `encoded` is a flat list [start, length, start, length, ...] over the row-major pixels; a run
    that would pass the last pixel is clipped there (as the official `min(length, H*W - start)`).
    Written vectorised rather than with the official per-pixel loop (~1e5 Python steps a mask).
    The 1-pixel border is then set to True, whatever the runs say: the official decoder's guard
    against annotation errors at the boundary, kept so that unedited-region metrics match.
    """
    if len(encoded) % 2:
        raise ValueError(f"a PIE-Bench RLE mask has [start, length] pairs; got an odd count {len(encoded)}")
    size = shape[0] * shape[1]
    starts, lengths = np.asarray(encoded[0::2], dtype=np.int64), np.asarray(encoded[1::2], dtype=np.int64)
    if (starts < 0).any() or (lengths < 0).any():
        raise ValueError("a PIE-Bench RLE mask has a negative start or length")
    # Runs as +1/-1 steps of a cumulative sum: vectorised, and overlapping runs still give 1. A run
    # starting past the last pixel sets nothing (the official loop has a non-positive length then).
    steps = np.zeros(size + 1, dtype=np.int64)
    np.add.at(steps, np.minimum(starts, size), 1)
    np.add.at(steps, np.minimum(starts + lengths, size), -1)
    flat = np.cumsum(steps[:-1]) > 0
    mask = flat.reshape(shape)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def clean_prompt(prompt: str) -> str:
    """The prompt with the characters "[" and "]" deleted, as the official scripts do."""
    return prompt.replace("[", "").replace("]", "")


def marked_words(prompt: str) -> list[str]:
    """The bracketed spans of a PIE-Bench prompt ("a [red] car" -> ["red"])."""
    return _MARKED.findall(prompt)


class PieBenchParams(DatasetParams):
    """Where the unzipped data is, which edit types, and how many samples."""

    root: str = Field(description="folder with mapping_file.json and annotation_images/")
    edit_types: list[EditType] | None = Field(
        None, min_length=1, description="editing_type_id values to keep (0-9); default all"
    )
    limit: int | None = Field(None, ge=1, description="at most this many samples, in file order")


@register_dataset
class PieBench(Dataset):
    """PIE-Bench samples in `mapping_file.json` order, with ids the file's 12-digit keys."""

    name = "pie_bench"
    Params = PieBenchParams
    params: PieBenchParams

    def __init__(self, params: PieBenchParams | dict[str, Any] | None = None) -> None:
        super().__init__(params)
        if not (self.root / MAPPING_FILE).is_file():
            raise DatasetError(
                f"pie_bench root {self.root} has no {MAPPING_FILE}: set `root:` to the unzipped PIEbench data "
                f"folder (mapping_file.json and annotation_images/), obtained through the form linked from "
                "the cure-lab/PnPInversion README"
            )

    @cached_property
    def root(self) -> Path:
        """The data folder."""
        return Path(self.params.root).expanduser()

    @cached_property
    def _entries(self) -> dict[str, Any]:
        """Id -> raw mapping entry, filtered by edit type, in file order, at most `limit`.

        Entries are checked one by one in `load`, so one malformed entry fails only its own sample;
        a file that is not JSON or not an object fails the whole dataset here. An entry whose
        edit type cannot be read is kept by any `edit_types` filter, so that its error is seen.
        """
        path = self.root / MAPPING_FILE
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {path}: {e}") from e
        if not isinstance(mapping, dict):
            raise DatasetError(
                f"{path} must be a JSON object keyed by 12-digit image ids, got {type(mapping).__name__}"
            )
        wanted = self.params.edit_types
        kept = {k: e for k, e in mapping.items() if wanted is None or _edit_type(e) in (*wanted, None)}
        return dict(list(kept.items())[: self.params.limit])

    def sample_ids(self) -> list[str]:
        """The mapping file's keys (after the edit-type filter and limit), in file order."""
        return list(self._entries)

    def load(self, sample_id: str) -> Sample:
        """The image, cleaned prompts, and meta: edit type, blended words, marked words, mask.

        Raises `DatasetError` naming the entry when it is malformed or its image path leaves
        `annotation_images/`.
        """
        try:
            raw = self._entries[sample_id]
        except KeyError:
            raise DatasetError(f"unknown pie_bench sample id {sample_id!r}") from None
        where = f"{self.root / MAPPING_FILE} entry {sample_id!r}"
        entry = validate_entry(_Entry, raw, where)
        path = resolve_inside(self.root / IMAGES_DIR, entry.image_path, where)
        try:
            mask = mask_decode(entry.mask)
        except ValueError as e:
            raise DatasetError(f"{where} has a bad mask: {e}") from e
        blended = entry.blended_word.split(" ") if entry.blended_word != "" else []
        meta: dict[str, Any] = {
            "edit_type": entry.editing_type_id,
            "edit_type_name": EDIT_TYPES[entry.editing_type_id],
            "editing_instruction": entry.editing_instruction,
            "blended_word": entry.blended_word,
            "source_marked": marked_words(entry.original_prompt),
            "target_marked": marked_words(entry.editing_prompt),
            "image_path": entry.image_path,
            "mask": mask,
        }
        if len(blended) == 2:
            meta["blended_words"] = blended
        return Sample(
            id=sample_id,
            image=load_rgb(path),
            target_prompt=clean_prompt(entry.editing_prompt),
            source_prompt=clean_prompt(entry.original_prompt),
            meta=meta,
        )


class _Entry(BaseModel):
    """One entry of `mapping_file.json`; other keys are allowed (and ignored)."""

    image_path: str
    original_prompt: str
    editing_prompt: str
    editing_instruction: str = ""
    editing_type_id: EditType
    blended_word: str
    mask: list[int]


def _edit_type(entry: Any) -> int | None:
    """The entry's editing_type_id as an int 0-9, or None when it cannot be read."""
    try:
        return _EDIT_TYPE.validate_python(entry["editing_type_id"])
    except (TypeError, KeyError, ValidationError):
        return None
