"""Reference stats and features for the set-level metric tests, built from a seed (no model)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from editsweep.reports.reference_stats import ReferenceStats

WNIDS = ["n01440764", "n01443537", "n01484850"]


def make_stats(rng: np.random.Generator, d: int) -> ReferenceStats:
    """Reference stats of 50 normal features in d dimensions, three classes with random means."""
    sample = rng.normal(size=(50, d))
    return ReferenceStats(
        extractor="random-cnn64:seed0:crop256",
        wnids=WNIDS,
        class_means=rng.normal(size=(3, d)),
        class_counts=np.array([10, 10, 10]),
        mean=sample.mean(0),
        cov=np.cov(sample, rowvar=False),
        count=50,
        sample_features=sample,
    )


@pytest.fixture
def pinned_case() -> Callable[[int, int], tuple[ReferenceStats, np.ndarray, list[str]]]:
    """(stats, n features shifted by 0.3, targets cycling over the 3 classes) for (d, n), seeded by d.

    The values pinned in the tests were computed on these cases with the functions the set-level
    metrics replaced (`reports/set_metrics.py` before the registry: numpy FID, torchmetrics KID).
    """

    def make(d: int, n: int) -> tuple[ReferenceStats, np.ndarray, list[str]]:
        rng = np.random.default_rng(d)
        stats = make_stats(rng, d)
        return stats, rng.normal(loc=0.3, size=(n, d)), [WNIDS[i % 3] for i in range(n)]

    return make


@pytest.fixture
def stats_factory() -> Callable[[np.random.Generator, int], ReferenceStats]:
    """`make_stats`: reference stats of 50 normal features in d dimensions."""
    return make_stats
