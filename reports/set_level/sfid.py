"""SFID (FlexIT, Couairon et al. CVPR 2022): squared distance of the mean feature to the reference mean.

SFID = || mean(F) - R.mean ||^2 over a point's features F (means only, no covariance: FlexIT's
"SFID(mean)"; METRICS.md). Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from editsweep.reports.set_level.base import MeanFeature, SetMetric, register_set_metric


@register_set_metric
class Sfid(SetMetric):
    """FlexIT's SFID: || mean edit feature - reference mean ||^2 (Inception pool3)."""

    name = "sfid"
    display = "SFID"
    higher_is_better = False
    meaning = "more realistic"

    def reset(self) -> None:
        """No images yet."""
        self.state = MeanFeature()

    def update(self, features: np.ndarray, targets: Sequence[str] | None = None) -> None:
        """Add the features to the running sum (targets are not needed)."""
        self.state.add(features)

    def compute(self) -> dict[str, float]:
        """{"sfid": value}; NaN without images."""
        return {self.name: float(((self.state.mean() - self.reference.mean) ** 2).sum()) if self.state.count else np.nan}
