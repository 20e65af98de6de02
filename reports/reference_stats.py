"""Reference statistics for SFID/CSFID/FID/KID: Inception features of real images, per class and overall.

FlexIT compares the edits' mean Inception feature with the mean over ImageNet train images
(SFID) and, per target class, with that class's mean (CSFID); its own stats file
(`inception_stats_256.pt`) was never published, so `editsweep reference-stats` recomputes it from a
folder of per-class wnid folders (e.g. ILSVRC2012 train), with the same scorer and preprocessing
as the edits (the `inception` scorer: resize 256 + center crop 256, 8-bit, FID Inception).

One `.npz` file holds: per-class means and counts (keyed by wnid), the global mean and covariance
over all images (the global mean is over images, not over class means, as FlexIT's `mean`), a seeded
random sample of features for KID (which needs samples, not moments), and the extractor's identity
(`InceptionScorer.weights_source`: architecture, weights sha256, crop size); the report refuses a
file whose identity differs from the one recorded in the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editsweep.bench.metrics.inception import InceptionScorer, resize_center_crop
from editsweep.datasets.images import load_rgb

FORMAT = "editsweep-reference-stats-v1"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".webp", ".bmp"}


class ReferenceStatsError(ValueError):
    """A reference stats file or folder cannot be used: the message names it and what to do."""


@dataclass
class ReferenceStats:
    """Inception feature statistics of a reference image set, and the extractor that made them."""

    extractor: str
    wnids: list[str]
    class_means: np.ndarray  # (C, d) float64
    class_counts: np.ndarray  # (C,) int64
    mean: np.ndarray  # (d,) over all images
    cov: np.ndarray  # (d, d) over all images, unbiased
    count: int
    sample_features: np.ndarray  # (K, d) random subset of the reference features, for KID

    def class_mean(self, wnid: str) -> np.ndarray:
        """The mean feature of class `wnid`; ReferenceStatsError when the stats lack it."""
        try:
            return self.class_means[self.wnids.index(wnid)]
        except ValueError:
            raise ReferenceStatsError(
                f"the reference stats have no class {wnid} ({len(self.wnids)} classes): compute them over a folder "
                "that has every target class (e.g. ILSVRC2012 train)"
            ) from None

    def save(self, path: str | Path) -> Path:
        """Write the stats as one .npz file (no pickled objects)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez(
                f,
                format=np.array(FORMAT),
                extractor=np.array(self.extractor),
                wnids=np.array(self.wnids, dtype=str),
                class_means=self.class_means,
                class_counts=self.class_counts,
                mean=self.mean,
                cov=self.cov,
                count=np.array(self.count),
                sample_features=self.sample_features,
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        """Read a file written by `save`; ReferenceStatsError naming the file when it is missing or foreign."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ReferenceStatsError(
                f"reference stats file {path} does not exist: make it with "
                "`editsweep reference-stats <folder of per-class wnid folders> --out <file.npz>`"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data or str(data["format"]) != FORMAT:
                    raise ReferenceStatsError(f"{path} is not an editsweep reference stats file ({FORMAT})")
                return cls(
                    extractor=str(data["extractor"]),
                    wnids=[str(w) for w in data["wnids"]],
                    class_means=data["class_means"],
                    class_counts=data["class_counts"],
                    mean=data["mean"],
                    cov=data["cov"],
                    count=int(data["count"]),
                    sample_features=data["sample_features"],
                )
        except (OSError, ValueError, KeyError) as e:
            if isinstance(e, ReferenceStatsError):
                raise
            raise ReferenceStatsError(f"cannot read reference stats file {path}: {e}") from e

    def check_extractor(self, extractor: str, where: str) -> None:
        """Raise ReferenceStatsError unless the features in `where` came from this file's extractor."""
        if extractor != self.extractor:
            raise ReferenceStatsError(
                f"the reference stats were computed with extractor {self.extractor!r} but {where} has features from "
                f"{extractor!r}: recompute them with `editsweep reference-stats` using the run's inception parameters"
            )


def class_images(root: str | Path) -> dict[str, list[Path]]:
    """wnid folder name -> its image files (sorted), for every non-empty class folder under `root`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReferenceStatsError(f"reference image folder {root} does not exist (expected per-class wnid folders)")
    classes = {
        d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir()
    }
    classes = {k: v for k, v in classes.items() if v}
    if not classes:
        raise ReferenceStatsError(
            f"reference image folder {root} has no class folder with images: expected <root>/<wnid>/*.JPEG "
            "(e.g. the ILSVRC2012 train layout)"
        )
    return classes


def compute_reference_stats(
    root: str | Path,
    scorer: InceptionScorer,
    per_class: int | None = None,
    batch_size: int = 32,
    kid_samples: int = 2000,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ReferenceStats:
    """Feature statistics of the images under `root/<wnid>/` (the first `per_class` of each class).

    Each image is resized and center-cropped like the edits (`scorer.params.size`) before the
    scorer's extractor. Sums are accumulated in float64, so memory does not grow with the image
    count. `progress(done, total)` is called after each batch.
    """
    classes = class_images(root)
    files = [(wnid, f) for wnid, fs in classes.items() for f in fs[:per_class]]
    keep = set(np.random.default_rng(seed).permutation(len(files))[:kid_samples].tolist())
    wnids = list(classes)
    sums: np.ndarray | None = None
    counts = np.zeros(len(wnids), dtype=np.int64)
    samples: list[np.ndarray] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        crops = [resize_center_crop(_to_tensor(load_rgb(f)), scorer.params.size) for _, f in chunk]
        feats = scorer.features(torch.cat(crops)).double().numpy()
        if sums is None:
            d = feats.shape[1]
            sums, total, outer = np.zeros((len(wnids), d)), np.zeros(d), np.zeros((d, d))
        for (wnid, _), feat in zip(chunk, feats, strict=True):
            sums[wnids.index(wnid)] += feat
            counts[wnids.index(wnid)] += 1
        total += feats.sum(0)
        outer += feats.T @ feats
        samples += [feats[i] for i in range(len(chunk)) if start + i in keep]
        if progress is not None:
            progress(start + len(chunk), len(files))
    n = len(files)
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / max(n - 1, 1)
    return ReferenceStats(
        extractor=scorer.weights_source,
        wnids=wnids,
        class_means=sums / counts[:, None],
        class_counts=counts,
        mean=mean,
        cov=cov,
        count=n,
        sample_features=np.stack(samples),
    )


def _to_tensor(image) -> torch.Tensor:
    """A PIL RGB image as a (1, 3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
