"""SFID (FlexIT): the squared distance of the mean feature to the reference mean, in any batches."""

from __future__ import annotations

import numpy as np
import pytest

from editsweep.reports.set_level.sfid import Sfid

PINNED = {(16, 40): 2.419784455819709, (64, 30): 9.151711340658196}  # the replaced `set_metrics.sfid`


@pytest.mark.parametrize(("d", "n"), list(PINNED))
def test_sfid_equals_the_formula_and_the_replaced_implementation(pinned_case, d, n):
    stats, features, _ = pinned_case(d, n)
    metric = Sfid(stats)
    for chunk in np.array_split(features, 3):
        metric.update(chunk)
    assert metric.compute()["sfid"] == pytest.approx(((features.mean(0) - stats.mean) ** 2).sum(), rel=1e-12)
    assert metric.compute()["sfid"] == pytest.approx(PINNED[d, n], rel=1e-12)
    metric.reset()
    assert np.isnan(metric.compute()["sfid"])
