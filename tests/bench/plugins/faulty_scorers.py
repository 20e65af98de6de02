"""Test-only scorers, loaded through a spec's `imports:` like any user plugin.

- `flaky`: scores each image by its largest pixel value (so a test sees exactly what was scored),
  and raises on chosen calls of the worker's instance or whenever it scores chosen samples.
"""

from __future__ import annotations

from editsweep.bench.metrics.base import ScoreBatch, ScorerParams, register_scorer
from editsweep.bench.metrics.pixel import _PixelScorer


class FlakyParams(ScorerParams):
    fail_calls: list[int] = []  # 1-based numbers of this instance's `score` calls that raise
    fail_samples: list[str] = []  # raise whenever one of these samples is in the batch


@register_scorer
class Flaky(_PixelScorer):
    name = "flaky"
    Params = FlakyParams

    def __init__(self, params, device) -> None:
        super().__init__(params, device)
        self.calls = 0

    def score(self, edited, sources, samples) -> ScoreBatch:
        self.calls += 1
        if self.calls in self.params.fail_calls:
            raise RuntimeError(f"injected scorer failure on call {self.calls}")
        hit = sorted({s.id for s in samples} & set(self.params.fail_samples))
        if hit:
            raise RuntimeError(f"injected scorer failure on {hit}")
        return ScoreBatch(scores={"max_pixel": edited.flatten(1).amax(1).double().cpu()})
