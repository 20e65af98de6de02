"""The report's set-level step: SFID, CSFID, FID and KID per sweep point from the stored Inception features.

Per sweep point (POINT_KEYS), over its ok images (all samples and seeds), each registered
set-level metric (`reports/set_level/`: SFID and CSFID after FlexIT, FID, KID) is updated with the
point's features F and target classes, against the reference stats of the point's dataset
(`ReferenceStats`), then computed. Their definitions and papers are in their own files.

Set metrics have no bootstrap CI here (their `_ci_low`/`_ci_high` are NaN). The report refuses
reference stats made with another extractor than the rows' `inception` scorer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from editsweep.bench.metrics.inception import FEATURE
from editsweep.reports.aggregate import POINT_KEYS, summary_metrics
from editsweep.reports.plots import tradeoff_panels
from editsweep.reports.reference_stats import ReferenceStats, ReferenceStatsError
from editsweep.reports.set_level import SET_METRICS

CSFID_FIGURE = "tradeoff_csfid.png"


def feature_extractor(weights: str | None) -> str | None:
    """The `inception` entry of a row's `weights` column ("backbone=...;inception=<identity>")."""
    for part in (weights or "").split(";"):
        name, _, source = part.partition("=")
        if name == FEATURE:
            return source
    return None


def point_set_metrics(results: pd.DataFrame, stats: dict[str, ReferenceStats]) -> pd.DataFrame:
    """One row per sweep point with inception features: each set-level metric's outputs, and n_features.

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
        needing = [cls.display or name for name, cls in SET_METRICS.items() if cls.needs_targets]
        if needing and any(t is None for t in targets):
            raise ValueError(
                f"{'/'.join(needing)} needs each row's target class (label target_wnid); rows of {point['method']} on "
                f"{point['dataset']} lack it: use the imagenet dataset"
            )
        for cls in SET_METRICS.values():
            metric = cls(ref)
            metric.update(features, targets)
            point.update(metric.compute())
        point["n_features"] = len(features)
        out.append(point)
    return pd.DataFrame(out, columns=[*POINT_KEYS, *set_metric_columns(), "n_features"])


def set_metric_columns() -> list[str]:
    """The registered set-level metrics' names, then their extras (e.g. "kid_std"), in registry order."""
    return [*SET_METRICS, *(extra for cls in SET_METRICS.values() for extra in cls.extras)]


def merge_into_summary(summary: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """`summary` with `<m>_mean`, `<m>_ci_low`/`_ci_high` (NaN: no CI), `<m>_n`, `<m>_n_inf` per set metric."""
    if points.empty:
        return summary
    columns = {}
    for m, cls in SET_METRICS.items():
        columns.update(
            {
                f"{m}_mean": points[m],
                f"{m}_ci_low": np.nan,
                f"{m}_ci_high": np.nan,
                f"{m}_n": points["n_features"],
                f"{m}_n_inf": 0,
            }
        )
        columns.update({extra: points[extra] for extra in cls.extras})
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
