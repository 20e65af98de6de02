"""The set-level metric API and its registry: metrics of a whole sweep point, from stored features.

A set-level metric is computed in the report, per sweep point, from the per-image feature vectors
the `inception` scorer stored in the rows (`bench/metrics/inception.py`), against the reference
statistics of real images (`reports/reference_stats.py`). Like a torchmetrics `Metric`, it holds
explicit state: `update` adds a batch of features (and their target classes), `compute` reads the
state, so a point's features can come in any number of batches. It states how to read it
(`display`, `higher_is_better`, `meaning`, `scale`) as per-image scorers do (`bench/metrics/base.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from editsweep.core.metrics import MetricInfo
from editsweep.core.registry import Registry
from editsweep.reports.reference_stats import ReferenceStats


class SetMetric(ABC):
    """A metric of a set of images: `update` with their features, then `compute` its value(s).

    `compute` returns {`name`: value} plus any `extras` (e.g. "kid_std"): the value goes to the
    summary's `<name>_mean` column, each extra to a column of its own. `needs_targets`: `update`
    must be given each image's target class (wnid).
    """

    name: ClassVar[str]
    display: ClassVar[str | None] = None  # None: the name
    higher_is_better: ClassVar[bool | None] = None
    meaning: ClassVar[str] = ""
    scale: ClassVar[float] = 1.0
    extras: ClassVar[tuple[str, ...]] = ()
    needs_targets: ClassVar[bool] = False

    def __init__(self, reference: ReferenceStats) -> None:
        self.reference = reference
        self.reset()

    @classmethod
    def metric_infos(cls) -> dict[str, MetricInfo]:
        """{`name`: how to read it}."""
        return {cls.name: MetricInfo(cls.display or cls.name, cls.higher_is_better, cls.meaning, cls.scale)}

    @abstractmethod
    def reset(self) -> None:
        """Empty the state."""

    @abstractmethod
    def update(self, features: np.ndarray, targets: Sequence[str] | None = None) -> None:
        """Add (N, d) features of N images (and their target wnids when `needs_targets`)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """{`name`: value, **extras} from the state; NaN where the state has too few images."""


class MeanFeature:
    """Running count and sum of features, in float64: the state of the mean-only FlexIT metrics."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        """Add (N, d) features."""
        features = np.asarray(features, dtype=np.float64)
        self.total = features.sum(0) if self.total is None else self.total + features.sum(0)
        self.count += len(features)

    def mean(self) -> np.ndarray:
        """The mean feature so far; ValueError when nothing was added."""
        if self.total is None or not self.count:
            raise ValueError("no features were added")
        return self.total / self.count


SET_METRICS: Registry[type[SetMetric]] = Registry("set-level metric")
register_set_metric = SET_METRICS.register
get_set_metric_class = SET_METRICS.__getitem__
