"""The Scorer API's self-description: every built-in score has a direction, display name and scale."""

from __future__ import annotations

import math

import torch

from editsweep.bench.metrics import SCORERS, MetricInfo, ScoreBatch, Scorer
from editsweep.bench.metrics.inception import InceptionScorer
from editsweep.bench.metrics.lpips_distance import LpipsScorer
from editsweep.datasets.base import Sample


def test_every_built_in_score_knows_its_direction_display_and_scale():
    infos = {name: cls.metric_infos() for name, cls in SCORERS.items() if cls.__module__.startswith("editsweep.")}
    assert infos["inception"] == {}  # features only
    columns = [column for per_scorer in infos.values() for column in per_scorer]
    assert len(columns) == len(set(columns)), "two scorers describe the same score"
    for name, per_scorer in infos.items():
        for column, info in per_scorer.items():
            assert info.higher_is_better is not None and info.display and info.meaning, (name, column)
            assert math.isfinite(info.scale) and info.scale > 0, (name, column)
    assert infos["lpips"] == {"lpips": MetricInfo("LPIPS", False, "more faithful", 1e3)}
    assert infos["pie_unedited"]["mse_unedited"].scale == 1e4


def test_a_single_score_scorer_is_described_by_its_class_attributes():
    class Sharpness(Scorer):
        name = "sharpness"
        higher_is_better = True

        def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
            return ScoreBatch()

    assert Sharpness.metric_infos() == {"sharpness": MetricInfo("sharpness", True, "", 1.0)}
    assert InceptionScorer.metric_infos() == {} and LpipsScorer.metric_infos()["lpips"].display == "LPIPS"
