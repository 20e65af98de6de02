"""COCO reconstruction set: a seeded draw of val2017 image-caption pairs, one caption each, on a
synthetic folder in the official layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from editsweep.datasets import get_dataset_class
from editsweep.datasets.base import DatasetError
from editsweep.datasets.coco import Coco

N_IMAGES = 30


def make_coco_root(root: Path, n_images: int = N_IMAGES) -> Path:
    """val2017/ with small JPEGs and annotations/captions_val2017.json, 3 captions per image
    (annotation ids deliberately not in caption order), plus one image without a caption."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for k in range(n_images + 1):
        image_id = 1000 + 7 * k
        name = f"{image_id:012d}.jpg"
        Image.new("RGB", (40 + k, 32), (k * 8 % 256, 100, 50)).save(root / "val2017" / name)
        images.append({"id": image_id, "file_name": name, "width": 40 + k, "height": 32})
        if k == n_images:
            continue  # no caption: never drawn
        for j, ann_id in enumerate((3 * image_id + 2, 3 * image_id, 3 * image_id + 1)):
            annotations.append({"id": ann_id, "image_id": image_id, "caption": f" caption {ann_id} of image {image_id}\n"})
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return make_coco_root(tmp_path_factory.mktemp("coco"))


def test_the_draw_is_deterministic_for_a_seed_and_differs_across_seeds(coco_root):
    assert get_dataset_class("coco") is Coco
    a = Coco({"root": str(coco_root), "n": 10, "seed": 3}).sample_ids()
    assert a == Coco({"root": str(coco_root), "n": 10, "seed": 3}).sample_ids()
    b = Coco({"root": str(coco_root), "n": 10, "seed": 4}).sample_ids()
    assert a != b
    assert len(set(a)) == 10
    every = Coco({"root": str(coco_root), "n": N_IMAGES, "seed": 0}).sample_ids()
    assert sorted(every) == [f"{1000 + 7 * k:012d}" for k in range(N_IMAGES)]  # the uncaptioned one never


def test_one_caption_per_image_the_lowest_annotation_id_as_both_prompts(coco_root):
    data = Coco({"root": str(coco_root), "n": 5, "seed": 1})
    for sample_id in data.sample_ids():
        sample = data.load(sample_id)
        image_id = int(sample_id)
        assert sample.target_prompt == sample.source_prompt == f"caption {3 * image_id} of image {image_id}"
        assert sample.image.mode == "RGB" and sample.meta["file_name"] == f"{sample_id}.jpg"


def test_missing_image_malformed_json_and_too_large_n_are_clear_errors(tmp_path):
    root = make_coco_root(tmp_path / "coco", n_images=4)
    data = Coco({"root": str(root), "n": 4})
    victim = data.sample_ids()[0]
    (root / "val2017" / f"{victim}.jpg").unlink()
    with pytest.raises(DatasetError, match=f"{victim}.jpg"):
        data.load(victim)
    with pytest.raises(DatasetError, match="4 captioned images, fewer than n=5"):
        Coco({"root": str(root), "n": 5}).sample_ids()
    captions = root / "annotations" / "captions_val2017.json"
    captions.write_text("{not json")
    with pytest.raises(DatasetError, match="captions_val2017.json"):
        Coco({"root": str(root), "n": 2}).sample_ids()
    captions.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(DatasetError, match="captions_val2017.json is not a COCO captions file"):
        Coco({"root": str(root), "n": 1}).sample_ids()
    with pytest.raises(DatasetError, match="has no annotations/captions_val2017.json"):
        Coco({"root": str(tmp_path)})
