"""FID from moments (torch-fidelity's formula): the Frechet distance, today's numbers, batches = all at once."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from editsweep.reports.set_level.fid import Fid

# (d, n) -> FID computed by the replaced numpy code (sqrt of the clipped real eigenvalues).
PINNED = {(16, 40): 5.03995463587518, (64, 30): 64.27433550164018}


def test_fid_is_the_frechet_distance(stats_factory):
    rng = np.random.default_rng(4)
    stats = stats_factory(rng, 8)
    features = rng.normal(loc=0.5, size=(40, 8))
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma @ stats.cov).real
    expected = ((mu - stats.mean) ** 2).sum() + np.trace(sigma + stats.cov - 2 * covmean)
    metric = Fid(stats)
    metric.update(features)
    assert metric.compute()["fid"] == pytest.approx(expected, rel=1e-6)
    metric.reset()
    metric.update(stats.sample_features)
    assert metric.compute()["fid"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("d", "n"), list(PINNED))
def test_fid_equals_the_replaced_implementation(pinned_case, d, n):
    # d=64 > n=30: a singular covariance whose product with the reference's has complex eigenvalue
    # pairs; torch-fidelity takes the real part of their complex square roots where the old code
    # took the square root of their clipped real parts: 64.274335115 vs 64.274335502 (6e-9 relative).
    stats, features, _ = pinned_case(d, n)
    metric = Fid(stats)
    metric.update(features)
    assert metric.compute()["fid"] == pytest.approx(PINNED[d, n], rel=1e-12 if d < n else 1e-8)


def test_updates_in_batches_equal_one_update(pinned_case):
    stats, features, _ = pinned_case(16, 40)
    whole, parts = Fid(stats), Fid(stats)
    whole.update(features)
    for chunk in np.array_split(features, [1, 9, 10, 33]):
        parts.update(chunk)
    assert parts.count == 40
    np.testing.assert_allclose(parts.comoment / 39, np.cov(features, rowvar=False), rtol=1e-12, atol=1e-14)
    assert parts.compute()["fid"] == pytest.approx(whole.compute()["fid"], rel=1e-12)


def test_fewer_than_two_images_give_nan(pinned_case):
    stats, features, _ = pinned_case(16, 40)
    metric = Fid(stats)
    assert np.isnan(metric.compute()["fid"])
    metric.update(features[:1])
    assert np.isnan(metric.compute()["fid"])
