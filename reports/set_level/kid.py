"""KID (Binkowski et al. 2018) between a point's features and the reference's stored feature sample.

torchmetrics `KernelInceptionDistance` with an identity feature module, subsets of
min(1000, N, K) images (N edits, K reference samples), 100 subsets drawn from torch's global
generator seeded with `seed` (forked, so the caller's stream is untouched). KID needs samples, not
moments: the state keeps the features. Reported as "kid" (mean over subsets) and "kid_std".
Lower is better.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from editsweep.reports.set_level.base import SetMetric, register_set_metric


@register_set_metric
class Kid(SetMetric):
    """Kernel Inception distance (torchmetrics) against the reference's feature sample; with its std."""

    name = "kid"
    display = "KID"
    higher_is_better = False
    meaning = "more realistic"
    extras = ("kid_std",)
    subsets: ClassVar[int] = 100
    max_subset_size: ClassVar[int] = 1000
    seed: ClassVar[int] = 0

    def reset(self) -> None:
        """No images yet."""
        self.features: list[np.ndarray] = []

    def update(self, features: np.ndarray, targets: Sequence[str] | None = None) -> None:
        """Keep the features (targets are not needed)."""
        self.features.append(np.asarray(features, dtype=np.float64))

    def compute(self) -> dict[str, float]:
        """{"kid": mean, "kid_std": std}; NaN for fewer than 2 images."""
        from torchmetrics.image.kid import KernelInceptionDistance

        features = np.concatenate(self.features) if self.features else np.zeros((0, 0))
        size = min(self.max_subset_size, len(features), len(self.reference.sample_features))
        if size < 2:
            return {self.name: np.nan, "kid_std": np.nan}
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(self.seed)  # torchmetrics draws its subsets from the global generator
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")  # we pass features
            metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=self.subsets, subset_size=size)
            metric.update(torch.from_numpy(self.reference.sample_features).double(), real=True)
            metric.update(torch.from_numpy(features).double(), real=False)
            mean, std = metric.compute()
        return {self.name: float(mean), "kid_std": float(std)}
