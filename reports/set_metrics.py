"""Set-level metrics from the Inception features stored in the rows: SFID, CSFID (FlexIT), FID and KID.

Per sweep point (POINT_KEYS), over its ok images (all samples and seeds), with F the (N, d)
features, t_i the target class (wnid) of image i, and R the reference stats (`ReferenceStats`):

- SFID  = || mean(F) - R.mean ||^2 (means only, no covariance; FlexIT's "SFID(mean)").
- CSFID = mean over the target classes c present in the point of || mean(F[t == c]) - R.mean_c ||^2
  (FlexIT's "CSFID(mean)": classes are weighted equally, whatever their image count).
- FID   = || mu_F - R.mean ||^2 + tr(S_F) + tr(R.cov) - 2 tr((S_F R.cov)^(1/2)), written out here:
  torchmetrics' FID takes images or features through its module and accumulates both sets itself,
  while the reference is kept as moments (ImageNet train's 1.28M features are too many to store).
  The trace of the square root is the sum of the square roots of the eigenvalues of S_F R.cov, as
  torchmetrics computes it.
- KID   = torchmetrics `KernelInceptionDistance` (identity feature module) between F and the
  reference's stored feature sample, subsets of min(1000, N, K) images; reported as `kid` (mean)
  with its std in `kid_std`.

Set metrics have no bootstrap CI here (their `_ci_low`/`_ci_high` are NaN). The report refuses
reference stats made with another extractor than the rows' `inception` scorer.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from editsweep.bench.metrics.inception import FEATURE
from editsweep.reports.aggregate import POINT_KEYS, summary_metrics
from editsweep.reports.plots import tradeoff_panels
from editsweep.reports.reference_stats import ReferenceStats, ReferenceStatsError

SET_METRICS = ("sfid", "csfid", "fid", "kid")
CSFID_FIGURE = "tradeoff_csfid.png"


def sfid(features: np.ndarray, stats: ReferenceStats) -> float:
    """FlexIT SFID: squared distance between the mean feature and the reference mean."""
    return float(((features.mean(0) - stats.mean) ** 2).sum())


def csfid(features: np.ndarray, target_wnids: list[str], stats: ReferenceStats) -> float:
    """FlexIT CSFID: per target class, squared distance of the class's mean feature to its reference mean; averaged."""
    labels = np.asarray(target_wnids)
    distances = [((features[labels == c].mean(0) - stats.class_mean(c)) ** 2).sum() for c in sorted(set(target_wnids))]
    return float(np.mean(distances))


def fid(features: np.ndarray, stats: ReferenceStats) -> float:
    """Frechet distance between the features' Gaussian and the reference's; NaN for fewer than 2 images."""
    if len(features) < 2:
        return float("nan")
    mu = features.mean(0)
    sigma = np.cov(features, rowvar=False)
    eigenvalues = np.linalg.eigvals(sigma @ stats.cov)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0.0, None)).sum()
    return float(((mu - stats.mean) ** 2).sum() + np.trace(sigma) + np.trace(stats.cov) - 2.0 * trace_sqrt)


def kid(features: np.ndarray, stats: ReferenceStats, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std) with torchmetrics against the reference's feature sample; NaN for fewer than 2 images."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(1000, len(features), len(stats.sample_features))
    if size < 2:
        return float("nan"), float("nan")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # torchmetrics draws its subsets from the global generator
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")  # we pass features
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=size)
        metric.update(torch.from_numpy(stats.sample_features).double(), real=True)
        metric.update(torch.from_numpy(features).double(), real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


def feature_extractor(weights: str | None) -> str | None:
    """The `inception` entry of a row's `weights` column ("backbone=...;inception=<identity>")."""
    for part in (weights or "").split(";"):
        name, _, source = part.partition("=")
        if name == FEATURE:
            return source
    return None


def point_set_metrics(results: pd.DataFrame, stats: dict[str, ReferenceStats]) -> pd.DataFrame:
    """One row per sweep point with inception features: sfid, csfid, fid, kid, kid_std, n_features.

    `stats` maps dataset name -> its reference stats. Raises ReferenceStatsError when the rows'
    extractor differs from the stats' or a target class is missing from them, ValueError when a
    row lacks its `target_wnid` label (CSFID needs it).
    """
    rows = results[results["status"].eq("ok") & results["features"].map(lambda f: bool(f) and FEATURE in f)]
    rows = rows.assign(backbone=rows["backbone"].fillna(""))
    out: list[dict[str, Any]] = []
    for key, group in rows.groupby(POINT_KEYS, sort=False, dropna=False):
        point = dict(zip(POINT_KEYS, key, strict=True))
        ref = stats.get(point["dataset"])
        if ref is None:
            continue
        for extractor in sorted({feature_extractor(w) or "unknown" for w in group["weights"]}):
            ref.check_extractor(extractor, f"the rows of {point['method']} on {point['dataset']}")
        features = np.stack([np.asarray(f[FEATURE], dtype=np.float64) for f in group["features"]])
        if features.shape[1] != ref.mean.shape[0]:
            raise ReferenceStatsError(
                f"feature size {features.shape[1]} of the rows differs from the reference stats' {ref.mean.shape[0]}"
            )
        targets = [(labels or {}).get("target_wnid") for labels in group["labels"]]
        if any(t is None for t in targets):
            raise ValueError(
                f"CSFID needs each row's target class (label target_wnid); rows of {point['method']} on "
                f"{point['dataset']} lack it: use the imagenet dataset"
            )
        kid_mean, kid_std = kid(features, ref)
        point.update(
            sfid=sfid(features, ref),
            csfid=csfid(features, targets, ref),
            fid=fid(features, ref),
            kid=kid_mean,
            kid_std=kid_std,
            n_features=len(features),
        )
        out.append(point)
    return pd.DataFrame(out, columns=[*POINT_KEYS, *SET_METRICS, "kid_std", "n_features"])


def merge_into_summary(summary: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """`summary` with `<m>_mean`, `<m>_ci_low`/`_ci_high` (NaN: no CI), `<m>_n`, `<m>_n_inf` per set metric."""
    if points.empty:
        return summary
    columns = {}
    for m in SET_METRICS:
        columns.update(
            {
                f"{m}_mean": points[m],
                f"{m}_ci_low": np.nan,
                f"{m}_ci_high": np.nan,
                f"{m}_n": points["n_features"],
                f"{m}_n_inf": 0,
            }
        )
    columns["kid_std"] = points["kid_std"]
    extra = pd.DataFrame(columns).assign(**{k: points[k] for k in POINT_KEYS})
    merged = summary.assign(backbone=summary["backbone"].fillna("")).merge(extra, on=POINT_KEYS, how="left")
    merged.attrs = dict(summary.attrs)
    return merged


def reference_stats_paths(spec: dict[str, Any], override: str | None, datasets: list[str]) -> dict[str, str]:
    """dataset name -> reference stats file: `override` for every dataset, else `datasets[].params.reference_stats`."""
    if override is not None:
        return {d: override for d in datasets}
    paths: dict[str, str] = {}
    for entry in spec.get("datasets") or []:
        path = (entry.get("params") or {}).get("reference_stats")
        if path and entry.get("name") in datasets:
            paths.setdefault(entry["name"], path)
    return paths


def add_set_metrics(
    summary: pd.DataFrame, results: pd.DataFrame, spec: dict[str, Any], out_dir: Path, reference_stats: str | None
) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """The report's set-level step: (summary with SFID/CSFID/FID/KID, figures drawn, notes).

    Does nothing for runs without inception features. Draws `tradeoff_csfid.png`: the CLIP-T and
    CSFID trade-off curves against LPIPS side by side in one figure. A missing reference stats file is
    a note; stats from another extractor raise ReferenceStatsError (mixing extractors gives
    meaningless numbers).
    """
    (out_dir / CSFID_FIGURE).unlink(missing_ok=True)
    has_features = results["status"].eq("ok") & results["features"].map(lambda f: bool(f) and FEATURE in f)
    if not has_features.any():
        return summary, [], []
    datasets = sorted(results.loc[has_features, "dataset"].unique())
    paths = reference_stats_paths(spec, reference_stats, datasets)
    missing = [d for d in datasets if d not in paths]
    notes = []
    if missing:
        notes.append(
            f"SFID/CSFID/FID/KID skipped for {', '.join(missing)}: no reference stats (set the dataset's "
            "`reference_stats:` param or pass `editsweep report --reference-stats FILE`)"
        )
    if not paths:
        return summary, [], notes
    stats = {d: ReferenceStats.load(p) for d, p in paths.items()}
    summary = merge_into_summary(summary, point_set_metrics(results, stats))
    figure = out_dir / CSFID_FIGURE
    pairs = [("lpips", "clip_t"), ("lpips", "csfid")] if "clip_t" in summary_metrics(summary) else [("lpips", "csfid")]
    try:
        tradeoff_panels(summary, figure, pairs)
    except ValueError as e:
        return summary, [], [*notes, f"CSFID-LPIPS plot skipped: {e}"]
    return summary, [figure], notes
