"""The synthetic dataset is deterministic, independent per sample, and its prompts describe its images."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from editsweep.datasets import get_dataset_class
from editsweep.datasets.base import DatasetError
from editsweep.datasets.synthetic import COLORS, SyntheticDataset


def test_registered_and_ids():
    assert get_dataset_class("synthetic") is SyntheticDataset
    assert SyntheticDataset().sample_ids() == [f"syn-{i:04d}" for i in range(8)]
    assert len(SyntheticDataset({"n": 10000}).sample_ids()) == 10000


def test_same_params_give_byte_identical_samples():
    a, b = SyntheticDataset({"n": 5, "size": 48, "seed": 3}), SyntheticDataset({"n": 5, "size": 48, "seed": 3})
    for sample_id in a.sample_ids():
        x, y = a.load(sample_id), b.load(sample_id)
        assert x.image.tobytes() == y.image.tobytes()
        assert (x.source_prompt, x.target_prompt, x.meta) == (y.source_prompt, y.target_prompt, y.meta)


def test_sample_does_not_depend_on_n_but_on_seed():
    small, large = SyntheticDataset({"n": 3}), SyntheticDataset({"n": 50})
    assert small.load("syn-0002").image.tobytes() == large.load("syn-0002").image.tobytes()
    other_seed = SyntheticDataset({"n": 3, "seed": 1})
    assert small.load("syn-0002").image.tobytes() != other_seed.load("syn-0002").image.tobytes()


def test_prompts_differ_in_the_edited_word_and_match_the_image():
    dataset = SyntheticDataset({"n": 40, "size": 64})
    edit_types = set()
    for sample_id in dataset.sample_ids():
        sample = dataset.load(sample_id)
        meta = sample.meta
        edit_types.add(meta["edit_type"])
        assert sample.image.mode == "RGB" and sample.image.size == (64, 64)
        source_word, target_word = meta["blended_words"]
        assert source_word != target_word
        words = zip(sample.source_prompt.split(), sample.target_prompt.split(), strict=True)
        changed = [(s, t) for s, t in words if s != t]
        assert [c for c in changed if c not in {("a", "an"), ("an", "a")}] == [(source_word, target_word)]
        attribute = "color" if meta["edit_type"] == "color" else "shape"
        assert (meta["source"][attribute], meta["target"][attribute]) == (source_word, target_word)
        # The center of the shape's box lies inside every shape, and is painted the source colour.
        x0, y0, x1, y1 = meta["bbox"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        center = np.asarray(sample.image)[(y0 + y1) // 2, (x0 + x1) // 2]
        assert tuple(center) == COLORS[meta["source"]["color"]]
    assert edit_types == {"color", "shape"}


def test_article_follows_the_colour():
    prompts = [SyntheticDataset({"n": 60}).load(i).source_prompt for i in SyntheticDataset({"n": 60}).sample_ids()]
    assert any("an orange" in p for p in prompts)
    assert not any("a orange" in p for p in prompts)


def test_unknown_ids_are_errors():
    dataset = SyntheticDataset({"n": 2})
    for bad in ["syn-0002", "syn-2", "tedbench-0000"]:
        with pytest.raises(DatasetError, match="unknown synthetic sample id"):
            dataset.load(bad)


@pytest.mark.parametrize(
    "params", [{"n": 0}, {"n": 10001}, {"size": 8}, {"size": 2048}, {"seed": -1}, {"colour": "red"}]
)
def test_invalid_params(params):
    with pytest.raises(ValidationError):
        SyntheticDataset(params)
