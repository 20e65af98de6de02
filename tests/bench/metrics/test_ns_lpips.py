"""NS-LPIPS: blind to changes inside the edit mask, sees changes outside it, NaN when nothing is
left, a clear error without a mask, masks mapped like `fit_square`, and a fast offline failure."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from editsweep.bench.metrics import ScorerWeightsError, get_scorer_class
from editsweep.core.lpips_models import backbone_file
from editsweep.bench.metrics.ns_lpips import NsLpipsScorer
from editsweep.datasets.base import Sample
from editsweep.datasets.images import fit_square, fit_square_mask
from editsweep.reports.aggregate import metric_info

from .conftest import smooth_images


@pytest.fixture(scope="module")
def scorer() -> NsLpipsScorer:
    return NsLpipsScorer({"weights": "random"}, torch.device("cpu"))


def box_mask(size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A (size, size) bool mask, True inside rows box[0]:box[1] and columns box[2]:box[3]."""
    mask = np.zeros((size, size), dtype=bool)
    mask[box[0] : box[1], box[2] : box[3]] = True
    return mask


def masked_samples(masks: list[np.ndarray | None]) -> list[Sample]:
    meta = [{} if m is None else {"mask": m} for m in masks]
    return [Sample(id=f"s{i}", image=Image.new("RGB", (8, 8)), target_prompt="x", meta=m) for i, m in enumerate(meta)]


def change(images: torch.Tensor, region: np.ndarray) -> torch.Tensor:
    """`images` with the pixels in `region` replaced by their inverse."""
    keep = torch.from_numpy(region).float()
    return images * (1 - keep) + (1 - images) * keep


@pytest.fixture(scope="module")
def native() -> NsLpipsScorer:
    """Scores at the images' own resolution (no resize): masks apply pixel for pixel."""
    return NsLpipsScorer({"weights": "random", "size": None}, torch.device("cpu"))


def test_changes_inside_the_mask_are_invisible_outside_they_count(scorer, native):
    assert get_scorer_class("ns_lpips") is NsLpipsScorer and metric_info("ns_lpips").higher_is_better is False
    assert scorer.params.net == "alex" and scorer.params.size == 256  # StyleDiffusion's setting
    src = smooth_images(1).repeat(2, 1, 1, 1)
    mask = box_mask(64, (16, 48, 16, 48))
    samples = masked_samples([mask, mask])
    inside = change(src[:1], box_mask(64, (20, 44, 20, 44)))  # a pixel or more from the mask's border
    outside = change(src[:1], box_mask(64, (0, 10, 0, 64)))
    d = scorer.score(torch.cat([inside, outside]), src, samples).scores["ns_lpips"]
    assert d[0].abs() < 1e-7 and d[1] > 1e-3
    assert (scorer.lpips.score(inside, src[:1], samples).scores["lpips"] > 1e-3).all()  # plain LPIPS sees it
    d_native = native.score(torch.cat([change(src[:1], mask), outside]), src, samples).scores["ns_lpips"]
    assert d_native[0] == 0 and d_native[1] > 1e-3  # the whole masked region changed: still exactly 0


def test_quirk_feeds_unit_range_images_as_if_minus_one_to_one(native):
    src = smooth_images(1)
    mask = box_mask(64, (16, 48, 16, 48))
    edited = change(src, box_mask(64, (0, 8, 0, 64)))
    keep = 1 - torch.from_numpy(mask).float()
    with torch.no_grad():
        raw = native.lpips.model(edited * keep, src * keep).flatten()
        normalised = native.lpips.model(edited * keep, src * keep, normalize=True).flatten()
    assert torch.allclose(native.score(edited, src, masked_samples([mask])).scores["ns_lpips"], raw, atol=1e-6)
    fixed = NsLpipsScorer({"weights": "random", "size": None, "stylediffusion_quirk": False}, torch.device("cpu"))
    assert torch.allclose(fixed.score(edited, src, masked_samples([mask])).scores["ns_lpips"], normalised, atol=1e-6)
    assert not torch.allclose(raw, normalised)


def test_full_mask_gives_nan_and_a_missing_mask_is_an_error(native):
    scorer = native
    src = smooth_images(2)
    full = np.ones((64, 64), dtype=bool)
    d = scorer.score(change(src, full), src, masked_samples([full, box_mask(64, (0, 8, 0, 8))])).scores["ns_lpips"]
    assert torch.isnan(d[0]) and torch.isfinite(d[1])
    with pytest.raises(ValueError, match=r"sample 's1' has none.*remove ns_lpips"):
        scorer.score(src, src, masked_samples([full, None]))


def test_masks_follow_fit_square_crop_and_resize():
    # A non-square original: 60 wide, 100 tall; fit_square keeps rows 20..80.
    mask = np.zeros((100, 60), dtype=bool)
    mask[20:50, 30:60] = True  # the top-right quarter of the kept square
    mask[0:20] = True  # cropped away: must not appear
    fitted = fit_square_mask(mask, 30)
    assert fitted.shape == (30, 30) and fitted.dtype == bool
    assert fitted[:15, 15:].all() and not fitted[15:].any() and not fitted[:, :15].any()
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("RGB")
    assert np.array_equal(np.asarray(fit_square(image, 60))[..., 0] > 127, fit_square_mask(mask, 60))
    with pytest.raises(ValueError, match="shape"):
        fit_square_mask(np.zeros((4, 4, 3)), 8)


def test_pretrained_offline_fails_fast_naming_the_backbone_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name, url = backbone_file("alex")
    start = time.monotonic()
    with pytest.raises(ScorerWeightsError) as info:
        NsLpipsScorer({}, torch.device("cpu"))
    assert time.monotonic() - start < 10
    assert name in str(info.value) and url in str(info.value)
