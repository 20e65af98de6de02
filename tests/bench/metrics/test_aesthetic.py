"""Aesthetic scorer: the real LAION head is the affine map its five matrices make, the scorer is
head(normalised CLIP embedding), heads are cached with a sha256 check, and offline loads fail fast."""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editsweep.bench.metrics import ScorerWeightsError, get_scorer_class
from editsweep.bench.metrics import aesthetic as aesthetic_module
from editsweep.bench.metrics.aesthetic import (
    HEAD_FILE,
    HEAD_SHA256,
    HEAD_URL,
    TINY_CLIP,
    AestheticHead,
    AestheticScorer,
    load_head,
    resolve_head,
)
from editsweep.reports.aggregate import metric_info

from ...conftest import SHARED_DATA
from .conftest import make_samples, smooth_images

REAL_HEAD = SHARED_DATA / "aesthetic" / HEAD_FILE
needs_real_head = pytest.mark.skipif(not REAL_HEAD.is_file(), reason=f"{REAL_HEAD} is not here")


@pytest.fixture(scope="module")
def scorer() -> AestheticScorer:
    return AestheticScorer({"weights": "random"}, torch.device("cpu"))


@needs_real_head
def test_real_head_file_is_the_published_one_and_reproduces_its_affine_map():
    assert hashlib.sha256(REAL_HEAD.read_bytes()).hexdigest() == HEAD_SHA256
    head = load_head(REAL_HEAD).eval()
    state = {k: v.double().numpy() for k, v in torch.load(REAL_HEAD, map_location="cpu", weights_only=True).items()}
    w_eff, b_eff = np.eye(768), np.zeros(768)
    for i in (0, 2, 4, 6, 7):  # y = W x + b, composed layer by layer
        w, b = state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]
        w_eff, b_eff = w @ w_eff, w @ b_eff + b
    assert w_eff.shape == (1, 768) and b_eff.shape == (1,)
    x = F.normalize(torch.randn(16, 768, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        ours = head(x).double().numpy()
    expected = x.double().numpy() @ w_eff.T + b_eff
    assert np.allclose(ours, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(expected) > 1e-3  # the map is not constant on unit vectors: the check has teeth


def test_registered_random_and_deterministic(scorer):
    assert get_scorer_class("aesthetic") is AestheticScorer
    assert scorer.random_weights is True and scorer.weights_source == "tiny-clip:random+head:random"
    images = smooth_images(3)
    torch.manual_seed(5)  # the global RNG state must not matter
    again = AestheticScorer({"weights": "random"}, torch.device("cpu"))
    first = scorer.score(images, images, make_samples(["a"] * 3)).scores["aesthetic"]
    assert torch.equal(first, again.score(images, images, make_samples(["a"] * 3)).scores["aesthetic"])
    assert first.shape == (3,) and torch.isfinite(first).all()
    assert metric_info("aesthetic").higher_is_better is True


def test_score_is_head_of_normalised_clip_embedding(scorer):
    images = smooth_images(3, height=80, width=96)
    with torch.no_grad():
        x = aesthetic_module.clip_preprocess(images, scorer.preprocess_cfg, scorer._mean, scorer._std)
        embedding = scorer.model.encode_image(x)
        expected = scorer.head(embedding / embedding.norm(dim=-1, keepdim=True)).flatten()
    assert x.shape == (3, 3, 64, 64)
    got = scorer.score(images, torch.zeros_like(images), make_samples(["a"] * 3)).scores["aesthetic"]
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, got[0].expand(3))  # different images, different scores


@needs_real_head
def test_local_clip_file_and_real_head_path(tmp_path, scorer):
    """`weights: file` + `head: path` load both, and the score is the real head on that CLIP."""
    from open_clip import add_model_config

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "editsweep-aesthetic-tiny.json").write_text(json.dumps({**TINY_CLIP, "quick_gelu": True}))
    add_model_config(tmp_path / "configs")
    checkpoint = tmp_path / "clip.bin"
    torch.save(scorer.model.state_dict(), checkpoint)
    local = AestheticScorer(
        {"model": "editsweep-aesthetic-tiny", "weights": str(checkpoint), "head": str(REAL_HEAD)}, torch.device("cpu")
    )
    assert local.random_weights is False and str(REAL_HEAD) in local.weights_source
    images = smooth_images(2)
    real_head = load_head(REAL_HEAD).eval()
    with torch.no_grad():
        expected = real_head(scorer.embeddings(images)).flatten()
    assert torch.allclose(
        local.score(images, images, make_samples(["a", "b"])).scores["aesthetic"], expected, atol=1e-5
    )


def test_pretrained_offline_fails_fast_naming_head_and_clip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(ScorerWeightsError) as info:
        AestheticScorer({}, torch.device("cpu"))
    assert time.monotonic() - start < 10
    message = str(info.value)
    for part in (
        HEAD_FILE,
        HEAD_URL,
        HEAD_SHA256,
        "head:",
        "ViT-L-14:openai",
        "timm/vit_large_patch14_clip_224.openai",
    ):
        assert part in message


def _go_online(monkeypatch, torch_home) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))


def _fake_urlopen(payload: bytes, calls: list[str]):
    def urlopen(url: str, timeout: float):
        calls.append(url)
        return io.BytesIO(payload)

    return urlopen


@needs_real_head
def test_pretrained_head_is_downloaded_once_with_its_sha256(tmp_path, monkeypatch):
    _go_online(monkeypatch, tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(aesthetic_module.urllib.request, "urlopen", _fake_urlopen(REAL_HEAD.read_bytes(), calls))
    path = resolve_head("pretrained")
    assert path == tmp_path / "hub" / "checkpoints" / HEAD_FILE and path.read_bytes() == REAL_HEAD.read_bytes()
    assert resolve_head("pretrained") == path and calls == [HEAD_URL]  # the second call reads the cache


def test_download_with_wrong_sha256_is_rejected_and_not_kept(tmp_path, monkeypatch):
    _go_online(monkeypatch, tmp_path)
    monkeypatch.setattr(aesthetic_module.urllib.request, "urlopen", _fake_urlopen(b"not the head", []))
    with pytest.raises(ScorerWeightsError, match="sha256"):
        resolve_head("pretrained")
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []


def test_corrupted_cached_head_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / HEAD_FILE).write_bytes(b"truncated")
    with pytest.raises(ScorerWeightsError, match="delete it"):
        resolve_head("pretrained")


def test_head_file_of_another_shape_or_missing_is_an_error(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ScorerWeightsError, match="does not fit"):
        load_head(wrong)
    with pytest.raises(ScorerWeightsError, match="does not exist"):
        resolve_head(str(tmp_path / "nope.pth"))


def test_head_loads_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    head = AestheticHead()
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    loaded = load_head(tmp_path / "head.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), loaded.state_dict().values()))
