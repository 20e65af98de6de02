"""NS-LPIPS (StyleDiffusion, Li et al.): LPIPS on the non-selected region, i.e. what an edit should
not have touched. Lower is more faithful.

As StyleDiffusion's `eval_metrics/ns_lpips.py`: both images resized to 256x256, multiplied by the
non-selected mask (1 outside the edited region, 0 inside), then LPIPS AlexNet. Quirk kept
(`stylediffusion_quirk`, default on): the script passes [0, 1] tensors to LPIPS without
`normalize=True`, so LPIPS reads them as if they were [-1, 1]; turn it off to map them properly.

The mask: StyleDiffusion binarises nothing in the end (its threshold is computed and then
overwritten) and uses a soft mask, 1 minus the cross-attention map of the edited word of its own
method. Scorers do not see a method's attention maps, so this scorer takes the dataset's mask
instead, `sample.meta["mask"]` (1 = edited region), inverted: the metric is then comparable
across methods, but not equal to the paper's per-method attention variant, which is left out.
A sample without a mask raises an error naming it (use a dataset with edit masks, e.g.
PIE-Bench, or drop `ns_lpips`); a mask that covers the whole image gives NaN (nothing to compare),
which the report leaves out of averages.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, register_scorer
from editsweep.bench.metrics.lpips_distance import LpipsScorer
from editsweep.datasets.base import Sample
from editsweep.datasets.images import fit_square_mask


class NsLpipsParams(ScorerParams):
    """LPIPS backbone (`weights` as for `lpips`), scoring size and StyleDiffusion's input-range quirk."""

    net: Literal["alex", "vgg", "squeeze"] = Field("alex", description="LPIPS backbone; StyleDiffusion uses alex")
    size: int | None = Field(256, ge=16, le=2048, description="resize both images to size x size; null: as they come")
    stylediffusion_quirk: bool = Field(True, description="feed [0,1] images to LPIPS as if [-1,1], as the reference")


def non_selected_masks(samples: list[Sample], size: int) -> torch.Tensor:
    """(N, 1, size, size) float masks, 1 where the sample's edit mask is 0 (the non-selected region)."""
    masks = []
    for sample in samples:
        mask = sample.meta.get("mask")
        if mask is None:
            raise ValueError(
                f"ns_lpips needs an edit mask and sample {sample.id!r} has none (sample.meta['mask']): score it on "
                "a dataset with edit masks (e.g. PIE-Bench), or remove ns_lpips from the spec's metrics"
            )
        masks.append(~fit_square_mask(np.asarray(mask), size))
    return torch.from_numpy(np.stack(masks)).unsqueeze(1).float()


@register_scorer
class NsLpipsScorer(Scorer):
    """LPIPS between edit and input with the edited region (dataset mask) blanked in both."""

    name = "ns_lpips"
    display = "NS-LPIPS"
    higher_is_better = False
    meaning = "more faithful"
    Params = NsLpipsParams

    def __init__(self, params: NsLpipsParams | dict[str, Any] | None, device: torch.device) -> None:
        super().__init__(params, device)
        self.lpips = LpipsScorer({"net": self.params.net, "weights": self.params.weights}, device)

    @property
    def weights_source(self) -> str:
        """As the `lpips` scorer: 'alex:random' or the backbone file."""
        return self.lpips.weights_source

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """Raw LPIPS of the masked pair per image; NaN where the mask leaves no non-selected pixel."""
        from torchvision.transforms.v2 import functional as TF

        p: NsLpipsParams = self.params
        a = edited.to(self.device, torch.float32)
        b = sources.to(self.device, torch.float32)
        size = p.size or a.shape[-1]
        if p.size is not None:  # antialiased bilinear, like the reference's PIL Resize((256, 256))
            a = TF.resize(a, [size, size], antialias=True).clamp(0.0, 1.0)
            b = TF.resize(b, [size, size], antialias=True).clamp(0.0, 1.0)
        elif a.shape[-2] != a.shape[-1]:
            raise ValueError(f"ns_lpips with size: null needs square images, got {tuple(a.shape[-2:])}")
        keep = non_selected_masks(samples, size).to(self.device)
        distance = self.lpips.model(a * keep, b * keep, normalize=not p.stylediffusion_quirk).flatten()
        empty = keep.flatten(1).sum(dim=1) == 0
        distance = torch.where(empty, torch.full_like(distance, float("nan")), distance)
        return ScoreBatch(scores={"ns_lpips": distance.cpu()})
