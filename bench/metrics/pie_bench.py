"""PIE-Bench's metrics (PnP Inversion, Ju et al. 2023), with the conventions of its evaluation code.

Two scorers, for samples that carry an edit mask in meta["mask"] ((H, W) bool, 1 = region to edit,
at the dataset image's resolution; see `datasets/pie_bench.py`):

`pie_unedited`: background preservation, as `evaluation/evaluate.py` of cure-lab/PnPInversion:
- quirk kept: both images are multiplied by (1 - mask) and the metric runs on the *whole* image,
  the zeroed edit region included (it counts as a perfect match), not on the unedited pixels only;
- "psnr_unedited": torchmetrics PSNR, data_range 1, over all pixels and channels (+inf if equal);
- "mse_unedited": mean squared error over all pixels and channels;
- "ssim_unedited": torchmetrics SSIM with its defaults (Gaussian 11, sigma 1.5), data_range 1;
- "lpips_unedited": LPIPS with SqueezeNet on inputs mapped to [-1, 1] (torchmetrics'
  `net_type='squeeze'`, which wraps the same `lpips` v0.1 heads);
- NaN for every one of them when the mask leaves no unedited pixel (the official "nan"); the
  report leaves NaN out of means and counts it.

`pie_clip`: CLIP similarity to the target prompt in torchmetrics' `CLIPScore` convention,
100 * max(cos, 0), with OpenAI's ViT-L/14 (`openai/clip-vit-large-patch14`; here loaded through
open_clip as ViT-L-14:openai, the same weights, via the `clip_t` scorer's loader):
- "clip_whole": the edited image;
- "clip_edited": the edited image with every pixel outside the edit mask set to zero (the
  official `img * mask`); NaN when the mask is empty.

Stored values are raw (LPIPS, MSE and SSIM as fractions); PIE-Bench's display scales (LPIPS x10^3,
MSE x10^4, SSIM x10^2) are declared in each scorer's `columns` and applied by the report's
per-edit-type breakdown (`reports/breakdown.py`).
A mask is brought to the scored images' size the way the worker brings images to the backbone's:
centre-cropped to a square, then resized, with nearest-neighbour sampling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from editsweep.bench.metrics.base import MetricInfo, ScoreBatch, Scorer, ScorerParams, register_scorer
from editsweep.bench.metrics.clip_t import ClipTScorer
from editsweep.bench.metrics.lpips_distance import LpipsScorer
from editsweep.datasets.base import Sample

UNEDITED_SCORES = ("psnr_unedited", "lpips_unedited", "mse_unedited", "ssim_unedited")
CLIP_SCORES = ("clip_whole", "clip_edited")


def edit_masks(samples: list[Sample], height: int, width: int, scorer: str) -> torch.Tensor:
    """(N, 1, H, W) float masks (1 = edit) of the samples, centre-cropped and resized with nearest.

    Raises ValueError naming the sample when one has no meta["mask"] (the scorer then needs a
    dataset with edit masks, such as `pie_bench`).
    """
    out = []
    for sample in samples:
        mask = sample.meta.get("mask")
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise ValueError(
                f"{scorer} needs an edit mask in the sample's meta['mask'] ((H, W) bool array); sample {sample.id!r} "
                f"has {type(mask).__name__}: use it with a dataset that provides masks, such as pie_bench"
            )
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((width, height), Image.Resampling.NEAREST)
        out.append(torch.from_numpy(np.asarray(image) > 127))
    return torch.stack(out).unsqueeze(1).float()


class PieUneditedParams(ScorerParams):
    """`weights` of the LPIPS SqueezeNet backbone, as in the `lpips` scorer (pretrained, random or a path)."""


@register_scorer
class PieUneditedScorer(Scorer):
    """PSNR, LPIPS (squeeze), MSE and SSIM on PIE-Bench's unedited region: images times (1 - mask)."""

    name = "pie_unedited"
    columns = {  # PIE-Bench's display scales (METRICS.md)
        "psnr_unedited": MetricInfo("PSNR (unedited)", True, "more faithful"),
        "lpips_unedited": MetricInfo("LPIPS (unedited)", False, "more faithful", 1e3),
        "mse_unedited": MetricInfo("MSE (unedited)", False, "more faithful", 1e4),
        "ssim_unedited": MetricInfo("SSIM (unedited)", True, "more faithful", 1e2),
    }
    Params = PieUneditedParams

    def __init__(self, params: PieUneditedParams | dict[str, Any] | None, device: torch.device) -> None:
        super().__init__(params, device)
        self._lpips = LpipsScorer({"net": "squeeze", "weights": self.params.weights}, device)

    @property
    def weights_source(self) -> str:
        """The LPIPS backbone, e.g. 'squeeze:/path/squeezenet1_1-b8a52dc0.pth'."""
        return self._lpips.weights_source

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """The four scores per image; NaN for all four where the mask covers the whole image."""
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        keep = 1.0 - edit_masks(samples, edited.shape[-2], edited.shape[-1], self.name).to(self.device)
        a = edited.to(self.device, torch.float32) * keep
        b = sources.to(self.device, torch.float32) * keep
        scores = {
            "psnr_unedited": peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)),
            "lpips_unedited": self._lpips.model(a * 2 - 1, b * 2 - 1).flatten(),
            "mse_unedited": (a - b).square().mean(dim=(1, 2, 3)),
            "ssim_unedited": structural_similarity_index_measure(a, b, data_range=1.0, reduction="none"),
        }
        empty = keep.sum(dim=(1, 2, 3)) == 0
        return ScoreBatch(scores={k: v.float().masked_fill(empty, float("nan")).cpu() for k, v in scores.items()})


@register_scorer
class PieClipScorer(ClipTScorer):
    """CLIPScore (100 * max(cos, 0)) of the whole edited image and of its edit region, against the target prompt."""

    name = "pie_clip"
    columns = {
        "clip_whole": MetricInfo("CLIP whole", True, "more editable"),
        "clip_edited": MetricInfo("CLIP edited", True, "more editable"),
    }

    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """"clip_whole" and "clip_edited" per image; "clip_edited" is NaN for an empty mask."""
        mask = edit_masks(samples, edited.shape[-2], edited.shape[-1], self.name).to(self.device)
        images = edited.to(self.device, torch.float32)
        text = self.text_embeddings([s.target_prompt for s in samples])
        whole = self.image_embeddings(images)
        region = self.image_embeddings(images * mask)
        empty = mask.sum(dim=(1, 2, 3)) == 0
        return ScoreBatch(
            scores={
                "clip_whole": (100 * (whole * text).sum(-1).clamp(min=0)).cpu(),
                "clip_edited": (100 * (region * text).sum(-1).clamp(min=0)).masked_fill(empty, float("nan")).cpu(),
            }
        )
