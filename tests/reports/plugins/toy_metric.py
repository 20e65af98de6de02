"""A metric added in one file (README "Adding a metric"): mean absolute pixel change, lower is better."""

from __future__ import annotations

import torch

from editsweep.bench.metrics.base import ScoreBatch, Scorer, register_scorer
from editsweep.datasets.base import Sample


@register_scorer
class ToyChangeScorer(Scorer):
    """Mean absolute difference between each edit and its input."""

    name = "toy_change"
    display = "Toy change"
    higher_is_better = False
    meaning = "more faithful"
    scale = 1e2

    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """One value per image, in [0, 1]."""
        return ScoreBatch(scores={"toy_change": (edited - sources).abs().mean(dim=(1, 2, 3)).float().cpu()})
