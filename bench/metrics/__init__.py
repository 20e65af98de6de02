"""Per-image scorers, each one registered module (importing this package registers them)."""

from editsweep.bench.metrics import (  # noqa: F401  (registration side effect)
    aesthetic,
    clip_t,
    flexit_accuracy,
    inception,
    lpips_distance,
    ns_lpips,
    pie_bench,
    pixel,
    shapes_truth,
    structure,
)
from editsweep.bench.metrics.base import (
    SCORERS,
    MetricInfo,
    Scorer,
    ScoreBatch,
    ScorerParams,
    ScorerWeightsError,
    get_scorer_class,
    register_scorer,
)

__all__ = ["SCORERS", "MetricInfo", "ScoreBatch", "Scorer", "ScorerParams", "ScorerWeightsError", "get_scorer_class", "register_scorer"]
