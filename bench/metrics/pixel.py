"""PSNR and SSIM between the edited image and its input, per image, with torchmetrics (data_range 1).

Identical images give PSNR = +inf (kept as is: the report decides how to average it) and SSIM 1.
SSIM uses torchmetrics' defaults (Gaussian kernel 11, sigma 1.5, k1 0.01, k2 0.03). PIE-Bench's
masked variants (images multiplied by 1 - mask first) are the `pie_unedited` scorer's; its x10^2
display scale of SSIM is `SsimScorer.scale`.
torchmetrics is imported on first use (it takes seconds), not when the registry is imported.
"""

from __future__ import annotations

import torch

from editsweep.bench.metrics.base import ScoreBatch, Scorer, register_scorer
from editsweep.datasets.base import Sample


class _PixelScorer(Scorer):
    """A scorer without weights: `weights` is ignored, `weights_source` is 'none'."""

    @property
    def random_weights(self) -> bool:
        """Always False: nothing is learned."""
        return False

    @property
    def weights_source(self) -> str:
        """Always 'none'."""
        return "none"

    def _pair(self, edited: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return edited.to(self.device, torch.float32), sources.to(self.device, torch.float32)


@register_scorer
class PsnrScorer(_PixelScorer):
    """PSNR in dB per image, 10 log10(1 / MSE) over all pixels and channels; higher is closer."""

    name = "psnr"
    display = "PSNR"
    higher_is_better = True
    meaning = "more faithful"

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """PSNR of each edited image against its input; +inf where they are identical."""
        from torchmetrics.functional.image import peak_signal_noise_ratio

        a, b = self._pair(edited, sources)
        psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
        return ScoreBatch(scores={"psnr": psnr.cpu()})


@register_scorer
class SsimScorer(_PixelScorer):
    """Mean SSIM per image (Gaussian window); 1 means identical."""

    name = "ssim"
    display = "SSIM"
    higher_is_better = True
    meaning = "more faithful"
    scale = 1e2  # PIE-Bench's x10^2 (METRICS.md)

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """SSIM of each edited image against its input (images must be at least 11 px a side)."""
        from torchmetrics.functional.image import structural_similarity_index_measure

        a, b = self._pair(edited, sources)
        ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
        return ScoreBatch(scores={"ssim": ssim.cpu()})
