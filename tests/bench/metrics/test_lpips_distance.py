"""LPIPS scorer: zero for identical images, ordered by noise, seeded random backbones, backbone
files read from the torch hub cache (never downloaded) and a fast, explicit error when absent."""

from __future__ import annotations

import time

import pytest
import torch
from pydantic import ValidationError

from editsweep.bench.metrics import ScorerWeightsError, get_scorer_class
from editsweep.bench.metrics.lpips_distance import LpipsScorer
from editsweep.core.lpips_models import backbone_file

from .conftest import add_noise, make_samples, smooth_images


@pytest.fixture(scope="module")
def vgg() -> LpipsScorer:
    return LpipsScorer({"weights": "random"}, torch.device("cpu"))


def test_registered_and_defaults(vgg):
    assert get_scorer_class("lpips") is LpipsScorer
    assert vgg.params.net == "vgg"
    assert vgg.random_weights is True and vgg.weights_source == "vgg:random"


def test_identical_is_zero_and_noise_increases_distance(vgg):
    clean = smooth_images(2)
    edited = torch.cat([clean, add_noise(clean, 0.03), add_noise(clean, 0.3)])
    sources = torch.cat([clean, clean, clean])
    lp = vgg.score(edited, sources, make_samples(["a"] * 6)).scores["lpips"]
    assert lp.shape == (6,)
    assert torch.allclose(lp[:2], torch.zeros(2), atol=1e-6)
    assert (lp[2:4] > 1e-4).all() and (lp[4:] > lp[2:4]).all()


def test_random_backbone_is_seeded():
    clean = smooth_images(2)
    edited = add_noise(clean, 0.1)
    samples = make_samples(["a", "b"])
    torch.manual_seed(1)
    first = LpipsScorer({"net": "squeeze", "weights": "random"}, torch.device("cpu")).score(edited, clean, samples)
    torch.manual_seed(2)
    second = LpipsScorer({"net": "squeeze", "weights": "random"}, torch.device("cpu")).score(edited, clean, samples)
    assert torch.equal(first.scores["lpips"], second.scores["lpips"])


@pytest.mark.filterwarnings("ignore:.*deprecated:UserWarning")  # lpips passes pretrained=True to torchvision
def test_pretrained_reads_torch_hub_cache_like_lpips_itself(tmp_path, monkeypatch):
    """A backbone file in $TORCH_HOME/hub/checkpoints gives the scores `lpips.LPIPS` computes from it."""
    import lpips
    from torchvision.models import squeezenet1_1

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name, _ = backbone_file("squeeze")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(squeezenet1_1(weights=None).state_dict(), tmp_path / "hub" / "checkpoints" / name)

    scorer = LpipsScorer({"net": "squeeze"}, torch.device("cpu"))
    assert scorer.random_weights is False and scorer.weights_source.endswith(name)
    clean = smooth_images(2)
    edited = add_noise(clean, 0.1)
    ours = scorer.score(edited, clean, make_samples(["a", "b"])).scores["lpips"]
    reference = lpips.LPIPS(net="squeeze", verbose=False)(edited, clean, normalize=True).flatten().detach()
    assert torch.allclose(ours, reference, atol=1e-6)
    folder = LpipsScorer({"net": "squeeze", "weights": str(tmp_path / "hub" / "checkpoints")}, torch.device("cpu"))
    assert torch.allclose(folder.score(edited, clean, make_samples(["a", "b"])).scores["lpips"], reference, atol=1e-6)


@pytest.mark.parametrize("net", ["vgg", "alex", "squeeze"])
def test_pretrained_missing_backbone_fails_fast(tmp_path, monkeypatch, net):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name, url = backbone_file(net)
    start = time.monotonic()
    with pytest.raises(ScorerWeightsError) as info:
        LpipsScorer({"net": net}, torch.device("cpu"))
    assert time.monotonic() - start < 10
    assert name in str(info.value) and url in str(info.value) and str(tmp_path) in str(info.value)


def test_unreadable_backbone_file_raises(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ScorerWeightsError, match="cannot be read"):
        LpipsScorer({"net": "squeeze", "weights": str(path)}, torch.device("cpu"))


def test_backbone_file_of_another_net_raises(tmp_path):
    from torchvision.models import squeezenet1_1

    path = tmp_path / "squeeze.pth"
    torch.save(squeezenet1_1(weights=None).state_dict(), path)
    with pytest.raises(ScorerWeightsError, match="does not fit"):
        LpipsScorer({"net": "alex", "weights": str(path)}, torch.device("cpu"))


def test_bad_params_are_rejected():
    with pytest.raises(ValidationError):
        LpipsScorer({"net": "resnet"}, torch.device("cpu"))
    with pytest.raises(ValidationError):
        LpipsScorer({"weights": "random", "scale": 100}, torch.device("cpu"))
