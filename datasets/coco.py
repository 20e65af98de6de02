"""COCO val2017 reconstruction set (Prompt Tuning Inversion, Dong et al. ICCV 2023): N image-caption pairs.

Expected layout under `root` (the official COCO 2017 downloads, unzipped side by side):

    val2017/<12-digit id>.jpg                     (val2017.zip)
    annotations/captions_val2017.json             (annotations_trainval2017.zip)

Selection rule (the paper says only "128 random pairs with a fixed seed", so this one is ours and
fixed here): take the ids of the images in `images` that have at least one caption, sort them
ascending, draw `n` of them without replacement with `numpy.random.default_rng(seed).choice`, and
keep the draw's order; each image gets its caption with the smallest annotation id, stripped of
surrounding whitespace. Source prompt = target prompt = that caption: the methods invert and
reconstruct, and PSNR/SSIM/LPIPS against the input measure the reconstruction.

A malformed `images` entry or caption fails only its image's sample (see `Coco._pairs`), and a
file_name that leads outside `val2017/` is refused (see `datasets/entries.py`).

COCO annotations are CC BY 4.0; images carry their Flickr licences.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, StrictInt

from editsweep.datasets.base import Dataset, DatasetError, DatasetParams, Sample, register_dataset
from editsweep.datasets.entries import resolve_inside, validate_entry
from editsweep.datasets.images import load_rgb

log = logging.getLogger(__name__)

CAPTIONS = "annotations/captions_val2017.json"
IMAGES_DIR = "val2017"


class CocoParams(DatasetParams):
    """Where COCO val2017 is, how many pairs, and the seed of the draw."""

    root: str = Field(description="folder with val2017/ and annotations/captions_val2017.json")
    n: int = Field(128, ge=1, description="image-caption pairs drawn (Prompt Tuning Inversion: 128)")
    seed: int = Field(0, ge=0, description="seed of the numpy draw of the images")


@register_dataset
class Coco(Dataset):
    """`n` COCO val2017 images drawn with `seed`, one caption each, ids the 12-digit image ids."""

    name = "coco"
    Params = CocoParams
    params: CocoParams

    def __init__(self, params: CocoParams | dict[str, Any] | None = None) -> None:
        super().__init__(params)
        if not (self.root / CAPTIONS).is_file():
            raise DatasetError(
                f"coco root {self.root} has no {CAPTIONS}: set `root:` to a folder holding the unzipped COCO 2017 "
                "val2017.zip (val2017/) and annotations_trainval2017.zip (annotations/) from cocodataset.org"
            )

    @cached_property
    def root(self) -> Path:
        """The COCO folder."""
        return Path(self.params.root).expanduser()

    @cached_property
    def _pairs(self) -> dict[str, tuple[str, str, str] | str]:
        """Sample id -> (its images entry, file name, caption), or the problem of a malformed sample,
        in draw order.

        A malformed image entry, or a malformed caption of an image, fails only that sample: the
        image stays in the pool the draw picks from (one without an id is named `images[<index>]`
        and comes after the sorted ids). A caption that names no usable image id belongs to no
        sample and is skipped with a warning. A file without the captions layout fails the whole
        dataset here.
        """
        path = self.root / CAPTIONS
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {path}: {e}") from e
        layout_ok = isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "annotations"))
        if not layout_ok:
            raise DatasetError(
                f"{path} is not a COCO captions file: it needs `images` [{{id, file_name}}] and "
                "`annotations` [{id, image_id, caption}] lists at the top level"
            )
        files: dict[int, tuple[str, str]] = {}
        problems: dict[int | str, list[str]] = {}
        listed: set[int] = set()  # ids of every images entry, malformed ones included
        for i, raw in enumerate(data["images"]):
            image_id = _int_field(raw, "id")
            if image_id is not None:
                listed.add(image_id)
            where = f"{path} images[{i}]" + ("" if image_id is None else f" (image id {image_id})")
            try:
                image = validate_entry(_Image, raw, where)
            except DatasetError as e:
                problems.setdefault(f"images[{i}]" if image_id is None else image_id, []).append(str(e))
                continue
            if image.id in files:
                problems.setdefault(image.id, []).append(f"{where}: image id {image.id} is listed twice")
            files[image.id] = (where, image.file_name)
        captions: dict[int, tuple[int, str]] = {}
        captioned: set[int] = set()
        for j, raw in enumerate(data["annotations"]):
            image_id = _int_field(raw, "image_id")
            if image_id is None:
                log.warning("%s annotations[%d] has no integer image_id: it belongs to no image, skipped", path, j)
                continue
            captioned.add(image_id)
            try:
                ann = validate_entry(_Caption, raw, f"{path} annotations[{j}] (a caption of image {image_id})")
            except DatasetError as e:
                problems.setdefault(image_id, []).append(str(e))
                continue
            if image_id not in captions or ann.id < captions[image_id][0]:
                captions[image_id] = (ann.id, ann.caption)
        pool: list[int | str] = [*sorted(listed & captioned), *(k for k in problems if isinstance(k, str))]
        if len(pool) < self.params.n:
            raise DatasetError(f"{path} has {len(pool)} captioned images, fewer than n={self.params.n}")
        chosen = np.random.default_rng(self.params.seed).choice(len(pool), size=self.params.n, replace=False)
        pairs: dict[str, tuple[str, str, str] | str] = {}
        for k in chosen:
            key = pool[k]
            sample_id = key if isinstance(key, str) else f"{key:012d}"
            if key in problems:
                pairs[sample_id] = "; ".join(problems[key])
            else:
                pairs[sample_id] = (*files[key], captions[key][1].strip())
        return pairs

    def sample_ids(self) -> list[str]:
        """The drawn images' 12-digit ids, in draw order."""
        return list(self._pairs)

    def load(self, sample_id: str) -> Sample:
        """`val2017/<file_name>` as RGB, with its caption as both source and target prompt.

        Raises `DatasetError` naming the entry when the image's entry or its caption is malformed,
        or its file_name leads outside `val2017/`.
        """
        try:
            pair = self._pairs[sample_id]
        except KeyError:
            raise DatasetError(f"sample id {sample_id!r} is not in the coco draw (n={self.params.n}, seed={self.params.seed})") from None
        if isinstance(pair, str):
            raise DatasetError(pair)
        where, file_name, caption = pair
        return Sample(
            id=sample_id,
            image=load_rgb(resolve_inside(self.root / IMAGES_DIR, file_name, where)),
            target_prompt=caption,
            source_prompt=caption,
            meta={"file_name": file_name},
        )


class _Image(BaseModel):
    """One entry of `images` (other keys, such as width and licence, are ignored)."""

    id: StrictInt
    file_name: str


class _Caption(BaseModel):
    """One entry of `annotations`."""

    id: StrictInt
    image_id: StrictInt
    caption: str


def _int_field(entry: Any, key: str) -> int | None:
    """`entry[key]` when `entry` is an object and that value is an int (not a bool), else None."""
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
