"""CLIP-T scorer: raw cosines of normalised open_clip embeddings, deterministic random weights,
local weights files and folders, and a fast, explicit failure when pretrained weights are absent."""

from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from editsweep.bench.metrics import ScorerWeightsError, get_scorer_class
from editsweep.bench.metrics.clip_t import ClipTScorer

from .conftest import PROMPTS, make_samples, smooth_images

SMALL = {"model": "ViT-S-32", "weights": "random"}  # smallest built-in ViT config, random weights


@pytest.fixture(scope="module")
def scorer() -> ClipTScorer:
    return ClipTScorer(SMALL, torch.device("cpu"))


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, list]:
    return smooth_images(len(PROMPTS), height=96, width=128), make_samples(PROMPTS)


@pytest.fixture(scope="module")
def scores(scorer, batch) -> torch.Tensor:
    images, samples = batch
    return scorer.score(images, images, samples).scores["clip_t"]


def test_registered_and_reports_random_weights(scorer):
    assert get_scorer_class("clip_t") is ClipTScorer
    assert scorer.random_weights is True
    assert scorer.weights_source == "ViT-S-32:random"


def test_one_cosine_per_image_in_range(scores):
    assert scores.shape == (len(PROMPTS),) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all() and (scores.abs() <= 1).all()


def test_is_cosine_of_open_clip_embeddings(scorer, batch, scores):
    images, _ = batch
    with torch.no_grad():
        image = scorer.model.encode_image(scorer.preprocess(images))
        text = scorer.model.encode_text(scorer.tokenizer(PROMPTS))
    expected = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    assert torch.allclose(scores, expected, atol=1e-5)
    # the same prompt (samples 0 and 2) is encoded once
    assert set(scorer._text_cache) == set(PROMPTS)


def test_tensor_preprocessing_matches_open_clip_pil_transform(scorer):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    images = (smooth_images(2, height=150, width=300) * 255).round() / 255  # exactly representable in 8 bit
    pil = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    transform = image_transform_v2(PreprocessCfg(**scorer.preprocess_cfg), is_train=False)
    reference = torch.stack([transform(p) for p in pil])
    ours = scorer.preprocess(images)
    assert ours.shape == reference.shape == (2, 3, 224, 224)
    assert (ours - reference).abs().mean() < 0.01  # PIL vs torch bicubic + 8-bit rounding


TINY_CFG = {  # a few-layer CLIP so that saving and loading weights files stays fast
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_model_name(tmp_path_factory) -> str:
    """Registers TINY_CFG with open_clip under a test-only name."""
    from open_clip import add_model_config

    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / "editsweep-test-tiny.json").write_text(json.dumps(TINY_CFG))
    add_model_config(folder)
    return "editsweep-test-tiny"


def test_random_weights_are_deterministic_across_constructions(tiny_model_name, batch):
    images, samples = batch
    params = {"model": tiny_model_name, "weights": "random"}
    torch.manual_seed(1)  # the global RNG state must not matter
    first = ClipTScorer(params, torch.device("cpu")).score(images, images, samples).scores["clip_t"]
    torch.manual_seed(2)
    second = ClipTScorer(params, torch.device("cpu")).score(images, images, samples).scores["clip_t"]
    assert torch.equal(first, second)


def test_weights_file_and_local_dir(tmp_path, tiny_model_name, batch):
    images, samples = batch
    cpu = torch.device("cpu")
    reference = ClipTScorer({"model": tiny_model_name, "weights": "random"}, cpu)
    expected = reference.score(images, images, samples).scores["clip_t"]
    assert reference.preprocess(images).shape == (len(PROMPTS), 3, 64, 64)
    checkpoint = tmp_path / "weights.bin"
    torch.save(reference.model.state_dict(), checkpoint)

    from_file = ClipTScorer({"model": tiny_model_name, "weights": str(checkpoint)}, cpu)
    assert from_file.random_weights is False and from_file.weights_source == f"{tiny_model_name}:{checkpoint}"
    assert torch.allclose(from_file.score(images, images, samples).scores["clip_t"], expected, atol=1e-6)

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    checkpoint.rename(folder / "open_clip_pytorch_model.bin")
    from_dir = ClipTScorer({"model": "ignored", "weights": f"local-dir:{folder}"}, cpu)
    assert from_dir.weights_source == f"local-dir:{folder}"
    assert torch.allclose(from_dir.score(images, images, samples).scores["clip_t"], expected, atol=1e-6)


def test_weights_file_of_another_architecture_raises(tmp_path, tiny_model_name):
    checkpoint = tmp_path / "other.bin"
    torch.save({"visual.proj": torch.zeros(3, 3)}, checkpoint)
    with pytest.raises(ScorerWeightsError, match="cannot be loaded"):
        ClipTScorer({"model": tiny_model_name, "weights": str(checkpoint)}, torch.device("cpu"))


def test_missing_weights_file_raises(tmp_path):
    with pytest.raises(ScorerWeightsError, match="does not exist"):
        ClipTScorer({"model": "ViT-S-32", "weights": str(tmp_path / "nope.bin")}, torch.device("cpu"))


def test_pretrained_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(ScorerWeightsError) as info:
        ClipTScorer({}, torch.device("cpu"))  # ViT-L-14 / openai
    assert time.monotonic() - start < 10
    message = str(info.value)
    for part in ("ViT-L-14", "openai", "timm/vit_large_patch14_clip_224.openai", "weights:", str(tmp_path / "hf")):
        assert part in message


def test_pretrained_online_stops_at_first_connection_failure(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def unreachable(repo_id: str, filename: str, **kwargs):
        calls.append((repo_id, filename))
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ScorerWeightsError, match="download failed"):
        ClipTScorer({"model": "ViT-B-32", "pretrained_tag": "openai"}, torch.device("cpu"))
    assert calls == [("timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors")]


def test_unknown_tag_raises():
    with pytest.raises(ScorerWeightsError, match="known tags"):
        ClipTScorer({"model": "ViT-B-32", "pretrained_tag": "no-such-tag"}, torch.device("cpu"))


def test_unknown_param_is_rejected():
    with pytest.raises(ValidationError):
        ClipTScorer({"model": "ViT-S-32", "weights": "random", "scale": 100}, torch.device("cpu"))
