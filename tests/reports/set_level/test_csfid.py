"""CSFID (FlexIT): per target class SFID against the class's reference mean, classes weighted equally."""

from __future__ import annotations

import numpy as np
import pytest

from editsweep.reports.reference_stats import ReferenceStatsError
from editsweep.reports.set_level.csfid import Csfid

PINNED = {(16, 40): 22.048596066135946, (64, 30): 72.82696986460621}  # the replaced `set_metrics.csfid`


@pytest.mark.parametrize(("d", "n"), list(PINNED))
def test_csfid_equals_the_formula_and_the_replaced_implementation(pinned_case, d, n):
    stats, features, targets = pinned_case(d, n)
    metric = Csfid(stats)
    metric.update(features[:5], targets[:5])
    metric.update(features[5:], targets[5:])
    labels = np.asarray(targets)
    per_class = [((features[labels == w].mean(0) - stats.class_mean(w)) ** 2).sum() for w in sorted(set(targets))]
    assert metric.compute()["csfid"] == pytest.approx(np.mean(per_class), rel=1e-12)
    assert metric.compute()["csfid"] == pytest.approx(PINNED[d, n], rel=1e-12)


def test_csfid_needs_targets_known_to_the_reference(pinned_case):
    stats, features, targets = pinned_case(16, 40)
    with pytest.raises(ValueError, match="target class"):
        Csfid(stats).update(features)
    metric = Csfid(stats)
    metric.update(features[:2], ["n01440764", "n99999999"])
    with pytest.raises(ReferenceStatsError, match="n99999999"):
        metric.compute()
    assert np.isnan(Csfid(stats).compute()["csfid"])
