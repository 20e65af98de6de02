"""CSFID (FlexIT, Couairon et al. CVPR 2022): SFID per target class, averaged over the classes.

CSFID = mean over the target classes c present of || mean(F[t == c]) - R.mean_c ||^2, classes
weighted equally whatever their image count (FlexIT's "CSFID(mean)"; METRICS.md). Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from editsweep.reports.set_level.base import MeanFeature, SetMetric, register_set_metric


@register_set_metric
class Csfid(SetMetric):
    """FlexIT's CSFID: per target class, || class mean edit feature - reference class mean ||^2, averaged."""

    name = "csfid"
    display = "CSFID"
    higher_is_better = False
    meaning = "more realistic and on-class"
    needs_targets = True

    def reset(self) -> None:
        """No images yet."""
        self.per_class: dict[str, MeanFeature] = {}

    def update(self, features: np.ndarray, targets: Sequence[str] | None = None) -> None:
        """Add each image's features to the running sum of its target class."""
        if targets is None or len(targets) != len(features):
            raise ValueError(f"{self.name} needs one target class (wnid) per image")
        labels = np.asarray(targets)
        for wnid in sorted(set(targets)):
            self.per_class.setdefault(wnid, MeanFeature()).add(np.asarray(features)[labels == wnid])

    def compute(self) -> dict[str, float]:
        """{"csfid": value}; NaN without images; ReferenceStatsError for a class the reference lacks."""
        distances = [
            ((state.mean() - self.reference.class_mean(wnid)) ** 2).sum() for wnid, state in sorted(self.per_class.items())
        ]
        return {self.name: float(np.mean(distances)) if distances else np.nan}
