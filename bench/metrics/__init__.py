"""Per-image scorers, each one registered module (importing this package registers them)."""

from editsweep.bench.metrics import clip_t, lpips_distance, pie_bench, pixel  # noqa: F401  (registration side effect)
from editsweep.bench.metrics.base import (
    SCORERS,
    Scorer,
    ScoreBatch,
    ScorerParams,
    ScorerWeightsError,
    get_scorer_class,
    register_scorer,
)

__all__ = ["SCORERS", "ScoreBatch", "Scorer", "ScorerParams", "ScorerWeightsError", "get_scorer_class", "register_scorer"]
