"""The shapes_truth scorer: the ground-truth target scores perfectly, the unedited source misses
every edit's attribute, scores follow the scored size, and samples without ground truth are errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from editsweep.bench.metrics import get_scorer_class
from editsweep.bench.metrics.shapes_truth import ShapesTruthScorer
from editsweep.bench.plan import plan
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker
from editsweep.datasets.base import Sample
from editsweep.datasets.images import fit_square
from editsweep.datasets.shapes import ShapesDataset
from editsweep.reports.aggregate import metric_info
from editsweep.toy import world


@pytest.fixture(scope="module")
def scorer() -> ShapesTruthScorer:
    return get_scorer_class("shapes_truth")({"weights": "random"}, torch.device("cpu"))


def tensors(images: list[Image.Image], size: int) -> torch.Tensor:
    arrays = [np.asarray(fit_square(i, size), dtype=np.float32) / 255.0 for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def load(dataset: ShapesDataset, size: int) -> list[Sample]:
    """Samples as the worker hands them to scorers: the image brought to the scored size."""
    samples = [dataset.load(i) for i in dataset.sample_ids()]
    for sample in samples:
        sample.image = fit_square(sample.image, size)
    return samples


def test_registered_with_lpips_weights_and_directions(scorer):
    assert isinstance(scorer, ShapesTruthScorer) and scorer.params.net == "alex"
    assert scorer.random_weights and scorer.weights_source == "alex:random"
    directions = {m: metric_info(m).higher_is_better for m in ("gt_psnr", "gt_lpips", "outside_psnr", "attr_acc")}
    assert directions == {"gt_psnr": True, "gt_lpips": False, "outside_psnr": True, "attr_acc": True}


@pytest.mark.parametrize(("data_size", "scored"), [(32, 32), (64, 32), (32, 64)])
def test_the_target_scores_perfectly_and_the_source_misses_every_edit(scorer, data_size, scored):
    samples = load(ShapesDataset({"n": 21, "size": data_size, "seed": 3}), scored)
    sources = tensors([s.image for s in samples], scored)
    targets = tensors([Image.fromarray(s.meta["target_image"]) for s in samples], scored)
    on_target = scorer.score(targets, sources, samples).scores
    on_source = scorer.score(sources, sources, samples).scores
    assert set(on_target) == {"gt_psnr", "gt_lpips", "outside_psnr", "attr_acc"} == set(scorer.metric_infos())
    assert on_target["attr_acc"].tolist() == [1.0] * len(samples)
    assert on_source["attr_acc"].tolist() == [0.0] * len(samples), [s.meta["edit_type"] for s in samples]
    assert torch.isinf(on_target["gt_psnr"]).all() and (on_target["gt_lpips"].abs() < 1e-6).all()
    assert (on_source["gt_psnr"] < 40).all() and (on_source["gt_lpips"] > 0).all()
    # The target differs from the source only inside the edit mask, up to faint anti-aliasing and,
    # when the scored size is not the dataset's, the resize's ringing past the mask's edge.
    assert (on_target["outside_psnr"] > (40 if data_size == scored else 35)).all(), on_target["outside_psnr"]
    assert torch.isinf(on_source["outside_psnr"]).all()


def test_outside_psnr_uses_the_pixels_outside_the_mask_only(scorer):
    image = Image.new("RGB", (32, 32), (100, 100, 100))
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True  # the left half is the edit region
    meta = {
        "target_image": np.asarray(image), "mask": mask, "edit_type": "background", "edited_object": None,
        "source_scene": {"objects": [], "background": ["gray"], "angle": 0.0},
        "target_scene": {"objects": [], "background": ["white"], "angle": 0.0},
    }
    sample = Sample(id="half", image=image, target_prompt="", meta=meta)
    source = tensors([image], 32)
    edited = source.clone()
    edited[..., :16] = 1.0  # changed inside the mask: does not count
    edited[..., 16:] += 0.1  # changed outside by 0.1 everywhere: MSE 0.01 there
    score = scorer.score(edited, source, [sample]).scores["outside_psnr"].item()
    assert score == pytest.approx(20.0, abs=1e-3)
    full = Sample(id="all", image=image, target_prompt="", meta={**meta, "mask": np.ones((32, 32), bool)})
    assert math.isnan(scorer.score(edited, source, [full]).scores["outside_psnr"].item())


def test_a_sample_without_ground_truth_is_an_error_naming_it(scorer):
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="'plain'.*target_image.*shapes dataset"):
        scorer.score(images, images, [Sample(id="plain", image=Image.new("RGB", (32, 32)), target_prompt="a cat")])
    sample = ShapesDataset({"n": 1}).load("shp-00000")
    sample.meta["mask"] = [[True]]
    with pytest.raises(ValueError, match="'shp-00000'.*mask as an"):
        scorer.score(images, images, [sample])


def test_the_worker_scores_a_shapes_sweep(tmp_path):
    spec = load_spec(
        {
            "name": "shapes-truth",
            "datasets": [{"name": "shapes", "params": {"n": 7}}],
            "methods": [{"name": "copy"}],
            "metrics": {"shapes_truth": {"weights": "random"}},
            "allow_random_weights": True,
        }
    )
    worker = SweepWorker(spec, str(tmp_path), "run-test")
    store = RunStore(str(tmp_path))
    for unit in plan(spec)[1]:
        store.write_rows(worker.process(unit).rows)
    rows = store.read_results()
    assert len(rows) == 7 and (rows["status"] == "ok").all(), rows["error"].tolist()
    assert [s["attr_acc"] for s in rows["scores"]] == [0.0] * 7  # the copy edits nothing
    assert all(s["outside_psnr"] == math.inf for s in rows["scores"])
    assert sorted(label["edit_type"] for label in rows["labels"]) == sorted(world.EDIT_TYPES)
