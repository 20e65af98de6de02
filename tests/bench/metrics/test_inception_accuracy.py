"""The inception feature scorer and FlexIT's DeiT accuracy: preprocessing, weights errors, restricted argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editsweep.bench.metrics.base import ScorerWeightsError
from editsweep.bench.metrics.flexit_accuracy import FlexitAccuracyScorer
from editsweep.bench.metrics.inception import WEIGHTS_FILE, WEIGHTS_URL, InceptionScorer, resize_center_crop
from editsweep.datasets.base import Sample

from .conftest import smooth_images


def class_samples(targets: list[int], sources: list[int], classes: tuple[int, ...]) -> list[Sample]:
    return [
        Sample(
            id=f"q{i}",
            image=Image.new("RGB", (8, 8)),
            target_prompt="x",
            meta={"target_id": t, "source_id": s, "target_classes": classes},
        )
        for i, (t, s) in enumerate(zip(targets, sources))
    ]


def test_resize_center_crop_matches_torchvision_on_pil():
    from torchvision import transforms as T

    image = smooth_images(1, height=60, width=90)
    pil = Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    expected = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])(pil)
    pixels = torch.from_numpy(np.asarray(pil) / 255.0).permute(2, 0, 1)[None].float()
    ours = resize_center_crop(pixels, 32)
    assert ours.shape == (1, 3, 32, 32)
    assert (ours[0] - expected).abs().max() < 2.5 / 255


def test_random_inception_features_are_deterministic_and_see_the_crop(cpu):
    scorer = InceptionScorer({"weights": "random"}, cpu)
    images = smooth_images(3, height=64, width=96)
    feats = scorer.score(images, images, []).features["inception"]
    assert feats.shape == (3, 64) and torch.isfinite(feats).all()
    assert torch.equal(feats, InceptionScorer({"weights": "random"}, cpu).features(images))
    # Pixels outside the center crop do not matter; pixels inside do.
    outside = images.clone()
    outside[..., :10] = 0.0
    assert torch.allclose(scorer.features(outside), feats, atol=1e-5)
    assert not torch.allclose(scorer.features(images.flip(-2)), feats, atol=1e-3)
    assert scorer.weights_source == "random-cnn64:seed0:crop256" and scorer.random_weights


def test_missing_inception_weights_name_the_file_and_url(cpu, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ScorerWeightsError) as err:
        InceptionScorer({}, cpu)
    assert WEIGHTS_FILE in str(err.value) and WEIGHTS_URL in str(err.value)
    bad = tmp_path / WEIGHTS_FILE
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ScorerWeightsError, match="cannot load FID Inception weights"):
        InceptionScorer({"weights": str(bad)}, cpu)


def test_accuracy_is_the_argmax_over_the_target_classes_only(cpu):
    scorer = FlexitAccuracyScorer({"weights": "random"}, cpu)
    images = smooth_images(4, height=64, width=80)
    logits = scorer.logits(images)
    classes = (3, 17, 250, 999)
    winners = [classes[i] for i in logits[:, list(classes)].argmax(-1).tolist()]
    # Targets: the restricted winner for images 0 and 1, another allowed class for 2 and 3.
    targets = [winners[0], winners[1], *[next(c for c in classes if c != w) for w in winners[2:]]]
    out = scorer.score(images, images, class_samples(targets, [0, 0, winners[2], 0], classes)).scores
    assert out["accuracy"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert out["unedited"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert set(out) == set(scorer.metric_infos())
    # One allowed class: every image is classified as it, whatever the unrestricted argmax says.
    single = scorer.score(images, images, class_samples([17] * 4, [3] * 4, (17,))).scores
    assert single["accuracy"].tolist() == [1.0] * 4


def test_accuracy_needs_class_meta(cpu):
    scorer = FlexitAccuracyScorer({"weights": "random"}, cpu)
    images = smooth_images(1)
    plain = [Sample(id="s0", image=Image.new("RGB", (8, 8)), target_prompt="a dog")]
    with pytest.raises(ValueError, match="target_id, source_id, target_classes missing for sample 's0'"):
        scorer.score(images, images, plain)


def test_missing_deit_weights_name_the_model(cpu, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ScorerWeightsError, match="facebook/deit-base-distilled-patch16-384"):
        FlexitAccuracyScorer({"model": "facebook/deit-base-distilled-patch16-384"}, cpu)


def test_lpips_with_size_compares_flexits_center_crop(cpu):
    from editsweep.bench.metrics.lpips_distance import LpipsScorer

    source = smooth_images(2, height=64, width=128)
    edited = source.clone()
    edited[..., :16] = 1.0 - edited[..., :16]  # changed only outside the center crop
    cropped = LpipsScorer({"net": "alex", "weights": "random", "size": 64}, cpu)
    whole = LpipsScorer({"net": "alex", "weights": "random"}, cpu)
    assert cropped.score(edited, source, []).scores["lpips"].abs().max() < 1e-6
    assert (whole.score(edited, source, []).scores["lpips"] > 1e-4).all()


def test_fid_inception_loads_a_weights_file_and_checks_the_pretrained_hash(cpu, tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    class Unloaded(tf_inception.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True):  # keep the random init: no weights here
            return None

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    torch.manual_seed(0)
    state = Unloaded("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / WEIGHTS_FILE)

    scorer = InceptionScorer({"weights": str(checkpoints / WEIGHTS_FILE)}, cpu)
    feats = scorer.features(smooth_images(2, height=64, width=80))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert scorer.weights_source.startswith("fid-inception-v3:sha256-") and not scorer.random_weights
    # "pretrained" finds the file in the torch hub cache, and refuses it: its sha256 is not the published one.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ScorerWeightsError, match="sha256 .* expected 6726825d"):
        InceptionScorer({}, cpu)
