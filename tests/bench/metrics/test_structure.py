"""Structure distance: zero for identical images, symmetric, keys as PIE-Bench reads them from DINO's
fused qkv, PIE-Bench's resizing and 0-255 quirk, local folders, and a fast offline failure."""

from __future__ import annotations

import time

import pytest
import torch

from editsweep.bench.metrics import ScorerWeightsError, get_scorer_class
from editsweep.bench.metrics.structure import StructureDistanceScorer, cosine_self_similarity
from editsweep.reports.aggregate import metric_info

from .conftest import add_noise, make_samples, smooth_images

SMALL = {"weights": "random", "size": 64}  # 8x8 patches + CLS: fast


@pytest.fixture(scope="module")
def scorer() -> StructureDistanceScorer:
    return StructureDistanceScorer(SMALL, torch.device("cpu"))


def _distance(scorer, edited, sources):
    return scorer.score(edited, sources, make_samples(["a"] * len(edited))).scores["structure_distance"]


def test_zero_for_identical_positive_for_different_and_symmetric(scorer):
    assert get_scorer_class("structure_distance") is StructureDistanceScorer
    assert metric_info("structure_distance").higher_is_better is False
    a, b = smooth_images(3, seed=0), smooth_images(3, seed=1)
    same = _distance(scorer, a, a)
    assert same.shape == (3,) and torch.equal(same, torch.zeros(3))
    ab, ba = _distance(scorer, a, b), _distance(scorer, b, a)
    assert (ab > 1e-6).all() and torch.allclose(ab, ba, rtol=1e-6, atol=0)
    slight = _distance(scorer, add_noise(a, 0.02), a)
    assert (slight < ab).all()  # a little noise changes the structure less than another image


def test_keys_match_the_last_layer_key_projection_and_dino_qkv_layout(scorer):
    images = smooth_images(2)
    keys = scorer.keys(images)
    model = scorer.model
    with torch.no_grad():
        hidden = model(pixel_values=scorer.preprocess(images), interpolate_pos_encoding=True, output_hidden_states=True)
        last = model.layers[-1]
        manual = last.attention.k_proj(last.layernorm_before(hidden.hidden_states[-2]))
    assert keys.shape == (2, 1 + 8 * 8, model.config.hidden_size)
    assert torch.allclose(keys, manual, atol=1e-6)
    # PIE-Bench: DINO's fused qkv output (T, 3*D) -> reshape (T, 3, H, d) -> keys (H, T, d) ->
    # transpose + reshape (T, H*d). Build that fused projection from q/k/v and read keys its way.
    attn = last.attention
    heads, tokens = model.config.num_attention_heads, keys.shape[1]
    with torch.no_grad():
        x = last.layernorm_before(hidden.hidden_states[-2])[0]
        weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        qkv = x @ weight.T + bias
        k = qkv.reshape(tokens, 3, heads, -1).permute(1, 2, 0, 3)[1]
        dino_keys = k.transpose(0, 1).reshape(tokens, -1)
    assert torch.allclose(keys[0], dino_keys, atol=1e-5)
    # and the distance is the MSE of their cosine self-similarities
    sims = cosine_self_similarity(keys)
    assert torch.allclose(sims.diagonal(dim1=1, dim2=2), torch.ones(2, tokens), atol=1e-5)
    expected = ((sims[0] - sims[1]) ** 2).mean()
    assert torch.allclose(_distance(scorer, images[:1], images[1:]), expected.reshape(1), rtol=1e-5)


def test_resize_matches_pie_bench_transform_and_quirk_scales_by_255():
    from torchvision import transforms

    quirk = StructureDistanceScorer({"weights": "random"}, torch.device("cpu"))
    plain = StructureDistanceScorer({"weights": "random", "pie_bench_quirk": False}, torch.device("cpu"))
    wide = smooth_images(1, height=64, width=256)  # short side 224 would make the long side 896 > 480
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = transforms.Compose(
        [transforms.Resize(224, max_size=480, antialias=False), transforms.Normalize(mean, std)]
    )
    assert quirk.preprocess(wide).shape == (1, 3, 120, 480)
    assert torch.allclose(quirk.preprocess(wide), reference(wide * 255), atol=1e-3)
    assert torch.allclose(plain.preprocess(wide), reference(wide), atol=1e-5)
    square = smooth_images(1)
    assert quirk.preprocess(square).shape == (1, 3, 224, 224)


def test_local_folder_gives_the_same_scores(tmp_path, scorer):
    scorer.model.save_pretrained(tmp_path / "dino")
    assert (tmp_path / "dino" / "model.safetensors").is_file()
    local = StructureDistanceScorer({"weights": str(tmp_path / "dino"), "size": 64}, torch.device("cpu"))
    assert local.random_weights is False and local.weights_source == str(tmp_path / "dino")
    a, b = smooth_images(2, seed=0), smooth_images(2, seed=1)
    assert torch.allclose(_distance(local, a, b), _distance(scorer, a, b), atol=1e-7)
    with pytest.raises(ScorerWeightsError, match="not a transformers ViT folder"):
        StructureDistanceScorer({"weights": str(tmp_path / "nothing")}, torch.device("cpu"))


def test_pretrained_offline_fails_fast_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    start = time.monotonic()
    with pytest.raises(ScorerWeightsError) as info:
        StructureDistanceScorer({}, torch.device("cpu"))
    assert time.monotonic() - start < 10
    for part in ("facebook/dino-vitb8", "hf download", "weights:", str(tmp_path / "hf")):
        assert part in str(info.value)


def test_mismatched_shapes_are_an_error(scorer):
    with pytest.raises(ValueError, match="one shape"):
        _distance(scorer, smooth_images(1), smooth_images(1, height=32, width=32))
