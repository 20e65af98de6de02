"""KID (torchmetrics, seeded subsets) as a set-level metric: today's numbers, direction of a shift."""

from __future__ import annotations

import numpy as np
import pytest

from editsweep.reports.set_level.kid import Kid

# (d, n) -> (kid, kid_std) computed by the replaced function (`set_metrics.kid`), same seed and subsets.
PINNED = {(16, 40): (0.3469059824054908, 0.043703555460120565), (64, 30): (0.28636604866467097, 0.04467947562007905)}


@pytest.mark.parametrize(("d", "n"), list(PINNED))
def test_kid_equals_the_replaced_implementation(pinned_case, d, n):
    stats, features, _ = pinned_case(d, n)
    metric = Kid(stats)
    metric.update(features[:7])
    metric.update(features[7:])
    assert metric.compute() == pytest.approx({"kid": PINNED[d, n][0], "kid_std": PINNED[d, n][1]}, rel=1e-12)


def test_kid_grows_with_a_shift(stats_factory):
    rng = np.random.default_rng(4)
    stats = stats_factory(rng, 8)
    same, shifted = Kid(stats), Kid(stats)
    same.update(rng.normal(size=(40, 8)))
    shifted.update(rng.normal(loc=0.5, size=(40, 8)) + 2.0)
    assert shifted.compute()["kid"] > same.compute()["kid"] + 0.5
    assert np.isnan(Kid(stats).compute()["kid"])
