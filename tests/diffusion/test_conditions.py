"""Condition extractors (diffusion/conditions.py): Canny equals OpenCV's `cv2.Canny` (the reference
ControlNet annotator) on pinned outputs, `gray` equals PIL's luminance, `depth` and `segmentation`
equal transformers' own post-processing of their (tiny random) models, loading, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editsweep.diffusion.conditions import CONDITIONS, canny

# `cv2.Canny(image, low, high) > 0` (opencv-python-headless 4.x, run once outside the project, which
# does not depend on OpenCV), np.packbits'ed, on `image()` below and on its `cv2.COLOR_RGB2GRAY`.
# The same check on 18 other random 64 px images and three threshold pairs had no differing pixel.
CV2_CANNY = {
    ("rgb", 100, 200): "0420842004208820042088203240405000c0605cc1801fc322000460064004200c0004201b000244f1c03b430060"
    "c0e000338038380000001830000008c6478b0302d89c06010810000088200401489814072088e1185a0716124d8004130400002084600660"
    "cd400140788700444140064c0060042104200820842008208420",
    ("rgb", 50, 100): "0420842004208820042088203240405000c0605cc1841fc322000460064004200c0004201b000244f1c03b430060c"
    "0e000338038380000001830000008c6478b0302d89c06010810001088200401489814072088e1185a0716124d8004130400002084600660c"
    "d404140788780444140064c0060042104200820842008208420",
    ("gray", 100, 200): "0420800004208000042080000640400002c04000010007c000001c60000070200000042000000c60000007c00000"
    "00000000000000000000000400000002001f00530010002100200020802000d8c010008020180300180702d2cc00041304000433040006318c"
    "000220f8000240400004600000002000000020000000200000",
}


def image() -> np.ndarray:
    small = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((32, 32), Image.BICUBIC))


def unpack(hex_bits: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_bits), dtype=np.uint8)).astype(bool).reshape(32, 32)


@pytest.mark.parametrize(("mode", "low", "high"), list(CV2_CANNY))
def test_canny_equals_opencv(mode, low, high):
    rgb = image()
    x = rgb if mode == "rgb" else np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(canny(x, low, high), unpack(CV2_CANNY[(mode, low, high)]))


def test_canny_thresholds_and_swapped_order():
    x = image()
    assert canny(x, 100, 200).sum() < canny(x, 50, 100).sum() <= canny(x, 0, 0).sum()
    assert np.array_equal(canny(x, 200, 100), canny(x, 100, 200))
    assert not canny(np.full((16, 16, 3), 77, np.uint8), 0, 0).any()


def test_extractors_give_three_channel_maps_in_unit_range():
    images = np.stack([image(), image()[::-1]])
    params = type("P", (), {"low_threshold": 100, "high_threshold": 200})()
    edges = CONDITIONS["canny"].extract(images, params)
    assert edges.shape == (2, 3, 32, 32) and set(edges.unique().tolist()) == {0.0, 1.0}
    assert np.array_equal(edges[0, 1].numpy().astype(bool), canny(images[0], 100, 200))
    gray = CONDITIONS["gray"].extract(images, params)
    expected = np.asarray(Image.fromarray(images[1]).convert("L")) / 255.0
    np.testing.assert_allclose(gray[1, 2].numpy(), expected, rtol=0, atol=1e-7)
    same = CONDITIONS["image"].extract(images, params)
    np.testing.assert_allclose(same[0].permute(1, 2, 0).numpy() * 255, images[0], rtol=0, atol=1e-4)


def test_unknown_extractor_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown condition 'normals'; known conditions: canny, depth, gray, image, seg"):
        CONDITIONS["normals"]


# depth and segmentation: the models' outputs post-processed as transformers' own post-processing does

PIXELS = np.stack([image(), image()[::-1]])


def test_depth_equals_transformers_post_processing_scaled_to_unit_range():
    """On the tiny random DPT: transformers' `post_process_depth_estimation` (bicubic to the image size)
    min-max scaled per image, as diffusers' ControlNet depth docs do (measured difference 0.0)."""
    from editsweep.diffusion.conditions import ConditionParams, load_extractor

    params = ConditionParams(condition="depth", depth_model="tiny")
    depth = CONDITIONS["depth"].extract(PIXELS, params)
    assert depth.shape == (2, 3, 32, 32)
    assert torch.equal(depth[:, 0], depth[:, 2])
    processor, model = load_extractor("depth", "tiny")
    assert load_extractor("depth", "tiny")[1] is model  # loaded once
    with torch.no_grad():
        outputs = model(pixel_values=processor(images=list(PIXELS), return_tensors="pt").pixel_values)
    for b, post in enumerate(processor.post_process_depth_estimation(outputs, target_sizes=[(32, 32)] * 2)):
        d = post["predicted_depth"]
        torch.testing.assert_close(depth[b, 0], (d - d.min()) / (d.max() - d.min()), rtol=0, atol=1e-5)
    assert depth.amin(dim=(1, 2, 3)).tolist() == [0.0, 0.0] and depth.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]


def test_segmentation_paints_transformers_labels_with_the_ade20k_palette():
    from editsweep.diffusion.ade20k import ADE20K_PALETTE
    from editsweep.diffusion.conditions import ConditionParams, load_extractor

    params = ConditionParams(condition="segmentation", segmentation_model="tiny")
    seg = CONDITIONS["segmentation"].extract(PIXELS, params)
    assert seg.shape == (2, 3, 32, 32)
    processor, model = load_extractor("segmentation", "tiny")
    with torch.no_grad():
        outputs = model(pixel_values=processor(images=list(PIXELS), return_tensors="pt").pixel_values)
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(32, 32)] * 2)
    palette = torch.tensor(ADE20K_PALETTE) / 255.0
    for b in range(2):
        torch.testing.assert_close(seg[b], palette[labels[b]].permute(2, 0, 1), rtol=0, atol=0)
    assert len(torch.unique(seg.flatten(2).permute(0, 2, 1).reshape(-1, 3), dim=0)) > 1


@pytest.mark.parametrize("kind", ["depth", "segmentation"])
def test_extractor_models_load_from_a_folder_or_fail_with_the_fix(kind, tmp_path, monkeypatch):
    from editsweep.diffusion.conditions import ConditionParams, ExtractorLoadError, _build_tiny, condition_sources

    processor, model = _build_tiny(kind)
    model.save_pretrained(tmp_path / kind, safe_serialization=True)
    processor.save_pretrained(tmp_path / kind)
    params = ConditionParams(condition=kind, **{f"{kind}_model": str(tmp_path / kind)})
    tiny = ConditionParams(condition=kind, **{f"{kind}_model": "tiny"})
    torch.testing.assert_close(CONDITIONS[kind].extract(PIXELS, params), CONDITIONS[kind].extract(PIXELS, tiny))
    assert condition_sources(tiny) == {kind: "tiny:random"}
    assert condition_sources(params) == {kind: str(tmp_path / kind)}
    assert condition_sources(ConditionParams()) == {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    default = ConditionParams(condition=kind)
    name = default.depth_model if kind == "depth" else default.segmentation_model
    with pytest.raises(ExtractorLoadError, match=f"huggingface-cli download {name}"):
        CONDITIONS[kind].extract(PIXELS, default)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractorLoadError, match="needs config.json, model.safetensors and preprocessor_config"):
        CONDITIONS[kind].extract(PIXELS, ConditionParams(condition=kind, **{f"{kind}_model": str(tmp_path / "empty")}))
