"""PIE-Bench scorers: the (1 - mask) convention on the whole image, NaN for an all-edit mask, the
mask brought to the images' size, and CLIPScore-convention CLIP whole / CLIP edited."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editsweep.bench.metrics import get_scorer_class
from editsweep.bench.metrics.clip_t import ClipTScorer
from editsweep.bench.metrics.pie_bench import PieClipScorer, PieUneditedScorer, edit_masks
from editsweep.datasets.base import Sample

from .conftest import add_noise, smooth_images

SIZE = 64


def box_mask(size: int = 512, lo: float = 0.25, hi: float = 0.75) -> np.ndarray:
    """A square edit region in the middle, as a dataset gives it (512x512 bool)."""
    mask = np.zeros((size, size), dtype=bool)
    mask[int(lo * size) : int(hi * size), int(lo * size) : int(hi * size)] = True
    return mask


def samples_with(masks: list[np.ndarray | None], prompt: str = "a photo of a cat") -> list[Sample]:
    return [
        Sample(id=f"s{i}", image=Image.new("RGB", (8, 8)), target_prompt=prompt, meta={} if m is None else {"mask": m})
        for i, m in enumerate(masks)
    ]


@pytest.fixture(scope="module")
def unedited(cpu=torch.device("cpu")) -> PieUneditedScorer:
    return PieUneditedScorer({"weights": "random"}, cpu)


@pytest.fixture(scope="module")
def clip(cpu=torch.device("cpu")) -> PieClipScorer:
    return PieClipScorer({"model": "ViT-S-32", "weights": "random"}, cpu)


def test_identical_images_give_inf_psnr_zero_mse_and_lpips_and_nan_for_an_all_edit_mask(unedited):
    assert get_scorer_class("pie_unedited") is PieUneditedScorer
    assert unedited.random_weights and unedited.weights_source == "squeeze:random"
    images = smooth_images(2, SIZE, SIZE)
    scores = unedited.score(images, images.clone(), samples_with([box_mask(), np.ones((512, 512), bool)])).scores
    assert set(scores) == {"psnr_unedited", "lpips_unedited", "mse_unedited", "ssim_unedited"}
    assert set(scores) == set(PieUneditedScorer.metric_infos())
    assert scores["psnr_unedited"][0] == float("inf")
    assert scores["mse_unedited"][0] == 0 and scores["lpips_unedited"][0] == 0
    assert scores["ssim_unedited"][0] == pytest.approx(1.0, abs=1e-6)
    assert all(torch.isnan(v[1]) for v in scores.values())


def test_changes_inside_the_mask_do_not_count_and_outside_follow_the_whole_image_convention(unedited):
    from torchmetrics.functional.image import peak_signal_noise_ratio

    sources = smooth_images(2, SIZE, SIZE)
    keep = torch.from_numpy(~box_mask(SIZE)).float()
    inside = sources * keep + add_noise(sources, 0.3) * (1 - keep)  # edited only where the mask is 1
    outside = add_noise(sources, 0.1)
    masks = samples_with([box_mask(), box_mask()])
    same = unedited.score(inside, sources, masks).scores
    assert same["mse_unedited"].eq(0).all() and same["lpips_unedited"].eq(0).all()
    assert torch.isinf(same["psnr_unedited"]).all()
    diff = unedited.score(outside, sources, masks).scores
    # PIE-Bench's quirk: the zeroed edit region stays in the average (a quarter of the pixels here).
    zeroed_a, zeroed_b = outside * keep, sources * keep
    expected_mse = (zeroed_a - zeroed_b).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(diff["mse_unedited"], expected_mse)
    only_unedited = ((outside - sources).square() * keep).sum(dim=(1, 2, 3)) / (3 * keep.sum())
    assert (diff["mse_unedited"] < only_unedited).all()  # not the mean over unedited pixels only
    torch.testing.assert_close(
        diff["psnr_unedited"], peak_signal_noise_ratio(zeroed_a, zeroed_b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    )
    assert (diff["lpips_unedited"] > 0).all() and (diff["ssim_unedited"] < 1).all()


def test_the_mask_is_cropped_and_resized_with_nearest_to_the_image_size():
    wide = np.zeros((512, 768), dtype=bool)
    wide[:, 128:384] = True  # the left half of the centre square
    masks = edit_masks(samples_with([wide]), SIZE, SIZE, "test")
    assert masks.shape == (1, 1, SIZE, SIZE) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert masks[0, 0, :, : SIZE // 2].eq(1).all() and masks[0, 0, :, SIZE // 2 :].eq(0).all()


def test_a_sample_without_a_mask_is_an_error_naming_it(unedited):
    images = smooth_images(1, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"pie_unedited needs an edit mask.*'s0'.*pie_bench"):
        unedited.score(images, images, samples_with([None]))


def test_clip_whole_and_edited_follow_clipscore_on_the_whole_and_the_masked_image(clip):
    assert get_scorer_class("pie_clip") is PieClipScorer
    images = smooth_images(3, SIZE, SIZE)
    masks = [box_mask(), box_mask(lo=0.0, hi=0.5), np.zeros((512, 512), bool)]
    scores = clip.score(images, images, samples_with(masks)).scores
    # The plain CLIP-T cosine of the same model: PIE-Bench's score is 100 * max(cos, 0) of it.
    cos = ClipTScorer.score(clip, images, images, samples_with([None] * 3)).scores["clip_t"]
    torch.testing.assert_close(scores["clip_whole"], 100 * cos.clamp(min=0), atol=1e-3, rtol=0)
    zeroed = images[:2] * edit_masks(samples_with(masks[:2]), SIZE, SIZE, "test")
    cos = ClipTScorer.score(clip, zeroed, zeroed, samples_with([None] * 2)).scores["clip_t"]
    torch.testing.assert_close(scores["clip_edited"][:2], 100 * cos.clamp(min=0), atol=1e-3, rtol=0)
    assert scores["clip_edited"][0] != pytest.approx(scores["clip_whole"][0].item(), abs=1e-3)
    assert torch.isnan(scores["clip_edited"][2]) and torch.isfinite(scores["clip_whole"]).all()
    assert set(scores) == set(PieClipScorer.metric_infos())
