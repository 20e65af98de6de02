"""The shapes dataset: deterministic per sample, every edit type present, masks and prompts that
match its ground truth, and clear errors for bad parameters and ids."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pytest
from pydantic import ValidationError

from editsweep.datasets import get_dataset_class
from editsweep.datasets.base import DatasetError, sample_labels
from editsweep.datasets.shapes import EditType, ShapesDataset, scene_from_dict
from editsweep.toy import world


def test_registered_ids_and_defaults():
    assert get_dataset_class("shapes") is ShapesDataset
    assert get_args(EditType) == world.EDIT_TYPES
    ids = ShapesDataset().sample_ids()
    assert len(ids) == 70 and ids[0] == "shp-00000" and ids[-1] == "shp-00069"
    assert ShapesDataset().load("shp-00000").image.size == (world.SIZE, world.SIZE)


def test_same_params_give_identical_samples_independent_of_n_but_not_of_seed():
    a, b = ShapesDataset({"n": 9, "seed": 4}), ShapesDataset({"n": 30, "seed": 4})
    for sample_id in a.sample_ids():
        x, y = a.load(sample_id), b.load(sample_id)
        assert x.image.tobytes() == y.image.tobytes()
        assert (x.source_prompt, x.target_prompt) == (y.source_prompt, y.target_prompt)
        assert (x.meta["mask"] == y.meta["mask"]).all() and (x.meta["target_image"] == y.meta["target_image"]).all()
        assert x.meta["target_scene"] == y.meta["target_scene"]
    other = ShapesDataset({"n": 9, "seed": 5})
    assert any(a.load(i).image.tobytes() != other.load(i).image.tobytes() for i in a.sample_ids())


def test_edit_types_cycle_and_filter():
    dataset = ShapesDataset({"n": 14})
    types = [dataset.load(i).meta["edit_type"] for i in dataset.sample_ids()]
    assert types == list(world.EDIT_TYPES) * 2
    only = ShapesDataset({"n": 4, "edit_types": ["move", "color"]})
    assert [only.load(i).meta["edit_type"] for i in only.sample_ids()] == ["move", "color", "move", "color"]


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_matches_the_renders_and_the_prompts(size):
    dataset = ShapesDataset({"n": 35, "size": size, "seed": 2})
    for sample_id in dataset.sample_ids():
        sample = dataset.load(sample_id)
        meta = sample.meta
        source, target = np.asarray(sample.image, dtype=np.int16), meta["target_image"].astype(np.int16)
        assert source.shape == target.shape == (size, size, 3) and meta["target_image"].dtype == np.uint8
        assert meta["mask"].shape == (size, size) and meta["mask"].dtype == bool
        changed = np.abs(source - target).max(-1) > 8
        assert changed.any() and not (changed & ~meta["mask"]).any(), sample_id
        assert (source[~meta["mask"]] == target[~meta["mask"]]).all() or meta["edit_type"] == "background"
        # The scenes are JSON-able and render to the images.
        src_scene = scene_from_dict(json.loads(json.dumps(meta["source_scene"])))
        tgt_scene = scene_from_dict(json.loads(json.dumps(meta["target_scene"])))
        assert world.render(src_scene, size).tobytes() == sample.image.tobytes()
        assert (np.asarray(world.render(tgt_scene, size)) == meta["target_image"]).all()
        assert (sample.source_prompt, sample.target_prompt) == (src_scene.caption(), tgt_scene.caption())
        source_word, target_word = meta["blended_words"]
        if meta["edit_type"] in ("color", "shape", "size", "background"):
            pairs = zip(sample.source_prompt.split(), sample.target_prompt.split(), strict=True)
            assert [(s, t) for s, t in pairs if s != t] == [(source_word, target_word)], sample_id
        else:  # move: the position words; add / remove: the anchor and the added / removed object's shape
            assert source_word in sample.source_prompt.split() and target_word in sample.target_prompt.split()
            assert source_word != target_word or meta["edit_type"] != "move"
        edited = meta["edited_object"]
        if meta["edit_type"] == "background":
            assert edited is None
        elif meta["edit_type"] == "remove":
            assert len(src_scene.objects) == 2 and src_scene.objects[edited] not in tgt_scene.objects
        elif meta["edit_type"] == "add":
            assert len(tgt_scene.objects) == 2 and tgt_scene.objects[edited] not in src_scene.objects
        else:
            assert src_scene.objects[edited] != tgt_scene.objects[edited]
        assert sample_labels(sample)["edit_type"] == meta["edit_type"]


def test_bad_params_and_ids_are_clear_errors():
    with pytest.raises(ValidationError, match="listed twice"):
        ShapesDataset({"edit_types": ["color", "color"]})
    with pytest.raises(ValidationError, match="'color'"):
        ShapesDataset({"edit_types": ["colour"]})
    with pytest.raises(ValidationError, match="at least 1"):
        ShapesDataset({"edit_types": []})
    for bad in ({"size": 48}, {"size": 1024}, {"n": 0}, {"n": 100001}, {"seed": -1}, {"frames": 3}):
        with pytest.raises(ValidationError):
            ShapesDataset(bad)
    assert ShapesDataset({"size": 512}).params.size == 512
    for bad_id in ("shp-00070", "shp-7", "syn-0000"):
        with pytest.raises(DatasetError, match="shp-00000 to shp-00069"):
            ShapesDataset().load(bad_id)
