"""PIE-Bench: the official RLE mask decoder, prompt cleaning, blended words, filters and errors, on
synthetic folders in the published layout (the data itself is not available here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from editsweep.datasets import get_dataset_class
from editsweep.datasets.base import DatasetError, sample_labels
from editsweep.datasets.pie_bench import EDIT_TYPES, PieBench, clean_prompt, mask_decode


def rle_encode(mask: np.ndarray) -> list[int]:
    """Test-side encoder: [start, length] of every run of ones in the row-major flattened mask."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def random_mask(seed: int) -> np.ndarray:
    """A blobby random 512x512 mask (upsampled coarse noise), plus scattered single pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((16, 16)) > 0.6
    mask = np.kron(coarse, np.ones((32, 32), dtype=bool))
    mask[rng.integers(0, 512, 50), rng.integers(0, 512, 50)] = True
    return mask


ENTRIES = {
    "000000000001": {
        "image_path": "0_random_140/000000000001.jpg",
        "original_prompt": "a cat sitting on a wooden table",
        "editing_prompt": "a [watercolor painting of a] cat sitting on a wooden table",
        "editing_instruction": "Make it a watercolor",
        "editing_type_id": "0",
        "blended_word": "",
    },
    "111000000002": {
        "image_path": "1_change_object_80/1_artificial/1_animal/111000000002.jpg",
        "original_prompt": "a [cat] sitting on a [wooden] table",
        "editing_prompt": "a [dog] sitting on a [wooden] table",
        "editing_instruction": "Change the cat to a dog",
        "editing_type_id": "1",
        "blended_word": "cat dog",
    },
    "611000000003": {
        "image_path": "6_change_attribute_color_40/1_artificial/1_animal/611000000003.jpg",
        "original_prompt": "a [white] horse in a field",
        "editing_prompt": "a [brown] horse in a field",
        "editing_instruction": "Make the horse brown",
        "editing_type_id": "6",
        "blended_word": "horse horse",
    },
}


def make_pie_root(root: Path, size: int = 512, entries: dict | None = None) -> Path:
    """A PIE-Bench folder in the published layout: mapping_file.json + annotation_images/."""
    mapping = {}
    for i, (key, entry) in enumerate((entries or ENTRIES).items()):
        path = root / "annotation_images" / entry["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        mapping[key] = {**entry, "mask": rle_encode(random_mask(i))}
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


@pytest.fixture
def pie_root(tmp_path) -> Path:
    return make_pie_root(tmp_path / "PIE-Bench", size=64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_decoder_round_trips_a_mask_except_the_border_which_is_all_one(seed):
    mask = random_mask(seed)
    mask[0, :5] = mask[-1, -5:] = False  # the border's content must not matter
    decoded = mask_decode(rle_encode(mask))
    assert decoded.shape == (512, 512) and decoded.dtype == bool
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_array_equal(decoded[inner], mask[inner])
    border = np.ones((512, 512), dtype=bool)
    border[inner] = False
    assert decoded[border].all()


def test_rle_decoder_clips_a_run_at_the_last_pixel_and_rejects_odd_lists():
    decoded = mask_decode([512 * 512 - 3, 100, 512 * 512 + 10, 4])  # runs past the end: clipped / ignored
    assert decoded.reshape(-1)[-3:].all()
    assert mask_decode([]).sum() == 4 * 511  # an empty mask is its border only
    with pytest.raises(ValueError, match="pairs"):
        mask_decode([10, 2, 30])


def test_prompts_are_cleaned_and_marked_words_blended_words_and_type_land_in_meta(pie_root):
    assert get_dataset_class("pie_bench") is PieBench
    data = PieBench({"root": str(pie_root)})
    assert data.sample_ids() == list(ENTRIES)
    sample = data.load("111000000002")
    assert sample.source_prompt == "a cat sitting on a wooden table"
    assert sample.target_prompt == "a dog sitting on a wooden table"
    assert "[" not in sample.target_prompt and "]" not in sample.source_prompt
    assert sample.meta["source_marked"] == ["cat", "wooden"] and sample.meta["target_marked"] == ["dog", "wooden"]
    assert sample.meta["blended_words"] == ["cat", "dog"]
    assert sample.meta["edit_type"] == 1 and sample.meta["edit_type_name"] == "change_object"
    assert sample.meta["mask"].shape == (512, 512) and sample.meta["mask"].dtype == bool
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_array_equal(sample.meta["mask"][inner], random_mask(1)[inner])
    assert sample.image.size == (64, 64) and sample.image.mode == "RGB"
    labels = sample_labels(sample)
    assert labels["edit_type"] == "1" and "mask" not in labels and "blended_words" not in labels
    assert "blended_words" not in data.load("000000000001").meta  # "" blended_word: no LocalBlend words
    assert clean_prompt("[a] b [c d]") == "a b c d"
    assert len(EDIT_TYPES) == 10


def test_edit_type_filter_and_limit(pie_root):
    assert PieBench({"root": str(pie_root), "edit_types": [1, 6]}).sample_ids() == ["111000000002", "611000000003"]
    assert PieBench({"root": str(pie_root), "edit_types": [6], "limit": 5}).sample_ids() == ["611000000003"]
    assert PieBench({"root": str(pie_root), "limit": 1}).sample_ids() == ["000000000001"]
    with pytest.raises(ValidationError, match="less than or equal to 9"):
        PieBench({"root": str(pie_root), "edit_types": [10]})


def test_a_missing_image_is_an_error_naming_the_file(pie_root):
    (pie_root / "annotation_images" / ENTRIES["611000000003"]["image_path"]).unlink()
    data = PieBench({"root": str(pie_root)})
    data.load("111000000002")
    with pytest.raises(DatasetError, match="611000000003.jpg"):
        data.load("611000000003")


def test_a_malformed_mapping_file_is_an_error_naming_it(pie_root):
    mapping = pie_root / "mapping_file.json"
    mapping.write_text(mapping.read_text()[:-20])
    with pytest.raises(DatasetError, match="mapping_file.json"):
        PieBench({"root": str(pie_root)}).sample_ids()
    mapping.write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(DatasetError, match=r"mapping_file.json must be a JSON object.*got list"):
        PieBench({"root": str(pie_root)}).sample_ids()


def test_a_root_without_the_mapping_file_says_what_to_provide(tmp_path):
    with pytest.raises(DatasetError, match="no mapping_file.json.*annotation_images"):
        PieBench({"root": str(tmp_path)})


def test_a_malformed_entry_fails_only_its_sample(pie_root):
    mapping_file = pie_root / "mapping_file.json"
    good = json.loads(mapping_file.read_text())
    broken = {
        "900000000001": {"image_path": "x.jpg"},
        "900000000002": {**good["111000000002"], "editing_prompt": None},
        "900000000003": {**good["111000000002"], "editing_type_id": "12"},
        "900000000004": "not an object",
        "900000000005": {**good["111000000002"], "mask": [1, 2, 3]},
    }
    mapping_file.write_text(json.dumps({**good, **broken}))
    data = PieBench({"root": str(pie_root)})
    assert data.sample_ids() == [*ENTRIES, *broken]
    assert data.load("111000000002").target_prompt == "a dog sitting on a wooden table"
    problems = {
        "900000000001": "original_prompt: Field required",
        "900000000002": "editing_prompt: Input should be a valid string",
        "900000000003": "editing_type_id: Input should be less than or equal to 9",
        "900000000004": "valid dictionary",
        "900000000005": "bad mask",
    }
    for key, problem in problems.items():
        with pytest.raises(DatasetError, match=rf"mapping_file.json entry '{key}'.*{problem}"):
            data.load(key)
    # An entry whose edit type cannot be read is kept by every filter, so that its error is seen.
    assert PieBench({"root": str(pie_root), "edit_types": [6]}).sample_ids() == [
        "611000000003", "900000000001", "900000000003", "900000000004"
    ]


@pytest.mark.parametrize("escape", ["../mapping_file.json", "../../secret/x.png", "absolute", "link.jpg"])
def test_an_image_path_outside_annotation_images_is_refused_without_reading_it(tmp_path, outside, opened, escape):
    root = make_pie_root(tmp_path / "PIE-Bench", size=64)
    mapping_file = root / "mapping_file.json"
    mapping = json.loads(mapping_file.read_text())
    if escape == "absolute":
        escape = str(outside)
    elif escape == "link.jpg":
        (root / "annotation_images" / "link.jpg").symlink_to(outside)
    mapping["611000000003"]["image_path"] = escape
    mapping_file.write_text(json.dumps(mapping))
    data = PieBench({"root": str(root)})
    assert data.sample_ids() == list(ENTRIES)
    with pytest.raises(DatasetError, match=rf"entry '611000000003'.*{re.escape(repr(escape))}.*(outside|absolute)"):
        data.load("611000000003")
    assert data.load("111000000002").image.size == (64, 64)
    assert outside.resolve() not in opened and mapping_file.resolve() not in opened
