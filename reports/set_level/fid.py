"""FID (Heusel et al. 2017) between a point's features and the reference, from moments.

The state is the features' running count, mean and sum of centred outer products (Chan et al.'s
pairwise update, in float64), so nothing but moments is kept; the reference is moments too
(ImageNet train's 1.28M features are too many to store). The distance is torch-fidelity's
`fid_statistics_to_metric` (what torchmetrics' FID relies on for its weights):
|| mu - R.mean ||^2 + tr(S) + tr(R.cov) - 2 sum sqrt(eig(S R.cov)). Lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from editsweep.reports.set_level.base import SetMetric, register_set_metric


@register_set_metric
class Fid(SetMetric):
    """Frechet distance between the edits' Gaussian and the reference's (torch-fidelity's formula)."""

    name = "fid"
    display = "FID"
    higher_is_better = False
    meaning = "more realistic"

    def reset(self) -> None:
        """No images yet."""
        self.count = 0
        self.mean: np.ndarray | None = None
        self.comoment: np.ndarray | None = None  # sum of (x - mean)(x - mean)^T

    def update(self, features: np.ndarray, targets: Sequence[str] | None = None) -> None:
        """Merge the batch's moments into the state (targets are not needed)."""
        features = np.asarray(features, dtype=np.float64)
        n = len(features)
        if n == 0:
            return
        mean = features.mean(0)
        centred = features - mean
        comoment = centred.T @ centred
        if self.mean is None or self.comoment is None:
            self.count, self.mean, self.comoment = n, mean, comoment
            return
        total = self.count + n
        delta = mean - self.mean
        self.comoment = self.comoment + comoment + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def compute(self) -> dict[str, float]:
        """{"fid": value}; NaN for fewer than 2 images (no covariance)."""
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        if self.count < 2 or self.mean is None or self.comoment is None:
            return {self.name: np.nan}
        edits = {"mu": self.mean, "sigma": self.comoment / (self.count - 1)}
        reference = {
            "mu": np.asarray(self.reference.mean, dtype=np.float64),
            "sigma": np.asarray(self.reference.cov, dtype=np.float64),
        }
        return {self.name: float(fid_statistics_to_metric(edits, reference, verbose=False)[KEY_METRIC_FID])}
