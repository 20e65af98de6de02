"""Set-level metrics, each one registered module (importing this package registers them).

The import order is the order of their columns in the summary and the leaderboard: keep it.
"""

# isort: off
from editsweep.reports.set_level import sfid, csfid, fid, kid  # noqa: F401  (registration side effect)

# isort: on
from editsweep.reports.set_level.base import SET_METRICS, SetMetric, get_set_metric_class, register_set_metric

__all__ = ["SET_METRICS", "SetMetric", "get_set_metric_class", "register_set_metric"]
