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

COCO annotations are CC BY 4.0; images carry their Flickr licences.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from editsweep.datasets.base import Dataset, DatasetError, DatasetParams, Sample, register_dataset
from editsweep.datasets.images import load_rgb

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
    def _pairs(self) -> dict[str, tuple[str, str]]:
        """Sample id -> (image file name, caption) of the drawn images, in draw order."""
        path = self.root / CAPTIONS
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
            captions: dict[int, tuple[int, str]] = {}
            for ann in data["annotations"]:
                image_id, ann_id, caption = int(ann["image_id"]), int(ann["id"]), str(ann["caption"])
                if image_id not in captions or ann_id < captions[image_id][0]:
                    captions[image_id] = (ann_id, caption)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {path}: {e}") from e
        except (KeyError, TypeError) as e:
            raise DatasetError(
                f"{path} is not a COCO captions file: it needs `images` [{{id, file_name}}] and "
                f"`annotations` [{{id, image_id, caption}}] ({type(e).__name__}: {e})"
            ) from e
        ids = sorted(i for i in files if i in captions)
        if len(ids) < self.params.n:
            raise DatasetError(f"{path} has {len(ids)} captioned images, fewer than n={self.params.n}")
        chosen = np.random.default_rng(self.params.seed).choice(len(ids), size=self.params.n, replace=False)
        return {f"{ids[i]:012d}": (files[ids[i]], captions[ids[i]][1].strip()) for i in chosen}

    def sample_ids(self) -> list[str]:
        """The drawn images' 12-digit ids, in draw order."""
        return list(self._pairs)

    def load(self, sample_id: str) -> Sample:
        """`val2017/<file_name>` as RGB, with its caption as both source and target prompt."""
        try:
            file_name, caption = self._pairs[sample_id]
        except KeyError:
            raise DatasetError(f"sample id {sample_id!r} is not in the coco draw (n={self.params.n}, seed={self.params.seed})") from None
        return Sample(
            id=sample_id,
            image=load_rgb(self.root / IMAGES_DIR / file_name),
            target_prompt=caption,
            source_prompt=caption,
            meta={"file_name": file_name},
        )
