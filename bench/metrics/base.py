"""The per-image `Scorer` API and the scorer registry.

A scorer runs on the worker right after an edit, on a batch: edited images, the (resized) input
images and the samples they came from. It returns one float per image for each score it names,
and may return feature vectors that the report turns into set-level metrics (FID, CSFID).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from editsweep.core.hub import WeightsError
from editsweep.core.metrics import MetricInfo
from editsweep.core.registry import Registry
from editsweep.datasets.base import Sample


class ScorerParams(BaseModel):
    """Base of every scorer's parameters.

    `weights`: "pretrained" loads the standard published weights (offline: from the local cache,
    or an error naming what is missing), "random" builds seeded random weights (allowed only when
    asked for; every row made with them says so), anything else is a local file or folder path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    weights: Literal["pretrained", "random"] | str = "pretrained"


# A scorer's weights are not available: the scorers' name for core/hub.py's `WeightsError`, which
# the shared model loaders (core/clip_models.py) raise too.
ScorerWeightsError = WeightsError


@dataclass
class ScoreBatch:
    """What a scorer returns for a batch of N images."""

    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,) float
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N, d) float


class Scorer(ABC):
    """A per-image metric with its weights loaded once per worker, and how to read its scores.

    A scorer that returns one score, named like the scorer, describes it with `display`,
    `higher_is_better` (None: unknown), `meaning` (what "better" is, for axis labels) and `scale`
    (the factor tables show it at). One that returns several, or only features, lists them in
    `columns` instead. The report reads them through `metric_infos` (`reports/aggregate.metric_info`).
    """

    name: ClassVar[str]
    Params: ClassVar[type[ScorerParams]] = ScorerParams
    display: ClassVar[str | None] = None  # None: the name
    higher_is_better: ClassVar[bool | None] = None
    meaning: ClassVar[str] = ""
    scale: ClassVar[float] = 1.0
    columns: ClassVar[Mapping[str, MetricInfo] | None] = None  # score name -> info, when not just `name`

    def __init__(self, params: ScorerParams | dict[str, Any] | None, device: torch.device) -> None:
        self.params = params if isinstance(params, ScorerParams) else self.Params(**(params or {}))
        self.device = device

    @property
    def random_weights(self) -> bool:
        """True when the scores come from random weights (not comparable to published numbers)."""
        return self.params.weights == "random"

    @property
    def weights_source(self) -> str:
        """Where the weights come from, recorded in every row (e.g. 'ViT-B-32:openai')."""
        return str(self.params.weights)

    @classmethod
    def metric_infos(cls) -> dict[str, MetricInfo]:
        """Score name -> how to read it, for every score `score` returns."""
        if cls.columns is not None:
            return dict(cls.columns)
        return {cls.name: MetricInfo(cls.display or cls.name, cls.higher_is_better, cls.meaning, cls.scale)}

    @abstractmethod
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """Score N edited images (N,3,H,W) in [0,1] against their inputs (same shape) and samples."""


SCORERS: Registry[type[Scorer]] = Registry("metric")
register_scorer = SCORERS.register
get_scorer_class = SCORERS.__getitem__
