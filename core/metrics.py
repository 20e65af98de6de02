"""How to read a metric: the description every per-image scorer and set-level metric carries.

Scorers (`bench/metrics/`) and set-level metrics (`reports/set_level/`) state it on their class;
the report (`reports/aggregate.metric_info`) reads it for table headers, arrows, axis labels,
Pareto fronts and display scales, as torchmetrics keeps `higher_is_better` on the metric itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """Display name, direction (None: unknown), what "better" means, and the factor tables show it at.

    `scale` multiplies stored values in the per-edit-type tables (e.g. 1000 for PIE-Bench's LPIPS
    x10^3); stored scores stay raw.
    """

    display: str
    higher_is_better: bool | None
    meaning: str = ""
    scale: float = 1.0
