"""PSNR and SSIM scorers: per-image values with the expected extremes and ordering."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from editsweep.bench.metrics import get_scorer_class
from editsweep.bench.metrics.pixel import PsnrScorer, SsimScorer

from .conftest import add_noise, make_samples, smooth_images


def test_registered_and_weightless(cpu):
    for name, cls in (("psnr", PsnrScorer), ("ssim", SsimScorer)):
        assert get_scorer_class(name) is cls
        scorer = cls(None, cpu)
        assert scorer.random_weights is False
        assert scorer.weights_source == "none"


def test_identical_images_give_inf_psnr_and_unit_ssim(cpu):
    images = smooth_images(3)
    samples = make_samples(["a", "b", "c"])
    psnr = PsnrScorer(None, cpu).score(images, images.clone(), samples).scores["psnr"]
    ssim = SsimScorer(None, cpu).score(images, images.clone(), samples).scores["ssim"]
    assert psnr.shape == (3,) and torch.isinf(psnr).all() and (psnr > 0).all()
    assert ssim.shape == (3,) and torch.allclose(ssim, torch.ones(3), atol=1e-5)


def test_per_image_values_and_noise_ordering(cpu):
    clean = smooth_images(2)
    slightly, very = add_noise(clean, 0.02), add_noise(clean, 0.2)
    edited = torch.cat([slightly, very])
    sources = torch.cat([clean, clean])
    samples = make_samples(["a"] * 4)
    psnr = PsnrScorer(None, cpu).score(edited, sources, samples).scores["psnr"]
    ssim = SsimScorer(None, cpu).score(edited, sources, samples).scores["ssim"]
    mse = ((edited - sources) ** 2).flatten(1).mean(dim=1)
    assert torch.allclose(psnr, 10 * torch.log10(1.0 / mse), rtol=1e-4)
    assert (psnr[:2] > psnr[2:]).all()
    assert (ssim[:2] > ssim[2:]).all() and (ssim < 1).all()
    # per image: scoring one image alone gives the same value as in the batch
    alone = PsnrScorer(None, cpu).score(edited[3:], sources[3:], samples[3:]).scores["psnr"]
    assert math.isclose(alone.item(), psnr[3].item(), rel_tol=1e-5)


def test_unknown_param_is_rejected(cpu):
    with pytest.raises(ValidationError):
        PsnrScorer({"data_range": 255}, cpu)
