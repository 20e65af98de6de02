"""COCO reconstruction set: a seeded draw of val2017 image-caption pairs, one caption each, on a
synthetic folder in the official layout."""

from __future__ import annotations

import json
import logging
import re
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
    captions.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}))
    with pytest.raises(DatasetError, match="captions_val2017.json is not a COCO captions file"):
        Coco({"root": str(root), "n": 1}).sample_ids()
    with pytest.raises(DatasetError, match="has no annotations/captions_val2017.json"):
        Coco({"root": str(tmp_path)})


def _edit_captions(root: Path, change) -> None:
    captions = root / "annotations" / "captions_val2017.json"
    data = json.loads(captions.read_text())
    change(data)
    captions.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "escape", ["../annotations/captions_val2017.json", "../../secret/x.png", "absolute", "link.jpg"]
)
def test_a_file_name_outside_val2017_is_refused_without_reading_it(tmp_path, outside, opened, escape):
    root = make_coco_root(tmp_path / "coco", n_images=4)
    if escape == "absolute":
        escape = str(outside)
    elif escape == "link.jpg":
        (root / "val2017" / "link.jpg").symlink_to(outside)

    def change(data):
        data["images"][2]["file_name"] = escape

    _edit_captions(root, change)
    data = Coco({"root": str(root), "n": 4})
    victim = f"{1000 + 7 * 2:012d}"
    assert sorted(data.sample_ids()) == [f"{1000 + 7 * k:012d}" for k in range(4)]
    expected = rf"images\[2\] \(image id 1014\).*{re.escape(repr(escape))}.*(outside|absolute)"
    with pytest.raises(DatasetError, match=expected):
        data.load(victim)
    assert all(data.load(i).image.mode == "RGB" for i in data.sample_ids() if i != victim)
    assert outside.resolve() not in opened and (root / "annotations" / "captions_val2017.json").resolve() not in opened


def test_a_malformed_image_or_annotation_fails_only_its_sample(tmp_path, caplog):
    root = make_coco_root(tmp_path / "coco", n_images=5)

    def change(data):
        data["images"][1]["file_name"] = None  # image 1007: a sample whose entry is wrong
        del data["images"][2]["id"]  # no id: a sample named by its index
        next(a for a in data["annotations"] if a["image_id"] == 1021)["caption"] = None  # image 1021
        next(a for a in data["annotations"] if a["image_id"] == 1028)["image_id"] = "abc"  # belongs to no image
        data["annotations"].append("not an object")

    _edit_captions(root, change)
    with caplog.at_level(logging.WARNING):
        data = Coco({"root": str(root), "n": 5})
        ids = data.sample_ids()
    assert sorted(ids) == sorted(["000000001000", "000000001007", "000000001021", "000000001028", "images[2]"])
    assert "annotations[12]" in caplog.text and "annotations[15]" in caplog.text  # the two unattributable ones
    assert data.load("000000001000").target_prompt == "caption 3000 of image 1000"
    assert data.load("000000001028").target_prompt == "caption 3084 of image 1028"  # its other captions
    problems = {
        "000000001007": r"images\[1\] \(image id 1007\) is malformed: file_name: Input should be a valid string",
        "images[2]": r"images\[2\] is malformed: id: Field required",
        "000000001021": r"annotations\[\d+\] \(a caption of image 1021\) is malformed: caption: Input should be",
    }
    for sample_id, problem in problems.items():
        with pytest.raises(DatasetError, match=rf"captions_val2017.json {problem}"):
            data.load(sample_id)
    # A file whose top level is not the captions layout is still an error for the whole dataset.
    _edit_captions(root, lambda d: d.update(images={"not": "a list"}))
    with pytest.raises(DatasetError, match="captions_val2017.json is not a COCO captions file"):
        Coco({"root": str(root), "n": 1}).sample_ids()
