"""From per-image result rows to one summary row per sweep point, with bootstrap CIs.

A sweep point is one (method, dataset, backbone, invert_params, edit_params) combination; its
images are the ok rows of that combination over samples and seeds. Each score gets a mean and a
percentile-bootstrap confidence interval over those images (`scipy.stats.bootstrap`). How to read
a score (direction, display name, scale) comes from the metric that made it (`metric_info`).

Non-finite scores: the mean and CI of a metric use its finite values only. NaN means "undefined
for this image" (METRICS.md: a mask with no unedited pixel) and a missing key means "not scored";
+-inf is typically PSNR of an identical image. A single +inf would otherwise turn the point's
mean into inf and hide every other image, so it is left out too, and `<metric>_n_inf` counts it:
`<metric>_n` finite values were averaged out of `n` images. The leaderboard shows both counts
whenever they differ from `n`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from editsweep.core.metrics import MetricInfo

POINT_KEYS = ["method", "dataset", "backbone", "dtype", "invert_params", "edit_params"]
_MAX_DRAWS = 20_000_000  # bootstrap index draws held in memory at once


def uses_toy_weights(weights: pd.Series) -> bool:
    """Whether any row's `weights` names a model trained on the toy world (a `toy:` source)."""
    from editsweep.diffusion.backbone import TOY_WEIGHTS_PREFIX

    return bool(weights.fillna("").str.contains(f"={TOY_WEIGHTS_PREFIX}", regex=False).any())


def metric_infos() -> dict[str, MetricInfo]:
    """Score name -> how to read it, from every registered scorer and set-level metric.

    Scorers declare it on their class (`bench/metrics/base.py` `Scorer.metric_infos`), set-level
    metrics on theirs (`reports/set_level/base.py`); a plugin's appear once its file is imported.
    """
    from editsweep.bench.metrics import SCORERS
    from editsweep.reports.set_level import SET_METRICS

    infos: dict[str, MetricInfo] = {}
    for cls in [*SCORERS.values(), *SET_METRICS.values()]:
        infos.update(cls.metric_infos())
    return infos


def metric_info(name: str) -> MetricInfo:
    """How to read the score `name`, also for variants like "lpips_vgg"; unknown: no direction."""
    infos = metric_infos()
    for key in sorted(infos, key=len, reverse=True):
        if name == key or name.startswith(key + "_"):
            info = infos[key]
            return info if name == key else replace(info, display=f"{info.display} ({name[len(key) + 1 :]})")
    return MetricInfo(name, None)


def summary_metrics(summary: pd.DataFrame) -> list[str]:
    """The metrics a summary from `aggregate` has columns for, in its column order."""
    return [c.removesuffix("_ci_low") for c in summary.columns if c.endswith("_ci_low")]


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 1000, ci: float = 0.95, rng: np.random.Generator | None = None
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of `values`, with `scipy.stats.bootstrap`.

    `n_boot` resamples with replacement, drawn from `rng` in batches of at most `_MAX_DRAWS`
    indices; the interval's ends are the linear-interpolated (1 - ci) / 2 quantiles of the resampled
    means. NaN for no values; a zero-width interval for one value or a constant metric.
    """
    values = np.asarray(values, dtype=np.float64)
    k = len(values)
    if k == 0:
        return float("nan"), float("nan")
    if k == 1:
        return float(values[0]), float(values[0])
    result = scipy.stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_boot,
        batch=max(1, _MAX_DRAWS // k),
        vectorized=True,
        confidence_level=ci,
        method="percentile",
        rng=rng if rng is not None else np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def aggregate(
    results: pd.DataFrame,
    metrics: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """One row per sweep point: image counts, error counts, and mean + bootstrap CI per metric.

    `results` is `RunStore.read_results()`. `metrics` defaults to every score name in the ok rows.
    Points that only have error rows are kept (n=0, NaN scores) so a failed point stays visible.
    Columns: POINT_KEYS, label, n, n_samples, n_seeds, n_error, top_error, random_weights,
    weights, time_invert_s, time_edit_s, then per metric `<m>_mean`, `<m>_ci_low`,
    `<m>_ci_high`, `<m>_n` (finite values used), `<m>_n_inf`. The CI level and bootstrap
    size are in `summary.attrs`. Each point's resampling is seeded from `seed` and the point
    itself, so adding points to a run does not change the CIs of the others.
    """
    rows = results.assign(backbone=results["backbone"].fillna("")).reset_index(drop=True)
    ok = rows["status"].eq("ok")
    scores = pd.DataFrame([s or {} for s in rows["scores"]], index=rows.index, dtype="float64")
    if metrics is None:
        metrics = sorted(scores.columns[scores[ok].notna().any()]) if len(scores.columns) else []
    scores = scores.reindex(columns=metrics)

    out = []
    for key, group in rows.groupby(POINT_KEYS, sort=False, dropna=False):
        good = group[ok.loc[group.index]]
        errors = group.loc[~ok.loc[group.index], "error"].dropna()
        record: dict[str, Any] = dict(zip(POINT_KEYS, key, strict=True))
        record.update(
            n=len(good),
            n_samples=good["sample_id"].nunique(),
            n_seeds=good["seed"].nunique(),
            n_error=len(group) - len(good),
            top_error=errors.value_counts().index[0] if len(errors) else "",
            random_weights=bool(group["random_weights"].eq(True).any()),
            weights="; ".join(sorted(set(group["weights"].dropna()))),
            time_invert_s=good["invert_s"].mean(),
            time_edit_s=good["edit_s"].mean(),
        )
        for metric in metrics:
            values = scores.loc[good.index, metric].to_numpy()
            finite = values[np.isfinite(values)]
            rng = np.random.default_rng([seed, zlib.crc32(json.dumps([*map(str, key), metric]).encode())])
            low, high = bootstrap_mean_ci(finite, n_boot=n_boot, ci=ci, rng=rng)
            record.update(
                {
                    f"{metric}_mean": finite.mean() if len(finite) else np.nan,
                    f"{metric}_ci_low": low,
                    f"{metric}_ci_high": high,
                    f"{metric}_n": len(finite),
                    f"{metric}_n_inf": int(np.isinf(values).sum()),
                }
            )
        out.append(record)

    summary = pd.DataFrame(out, columns=_summary_columns(metrics))
    summary.insert(len(POINT_KEYS), "label", label_points(summary))
    summary = sort_points(summary)
    summary.attrs.update(ci=ci, n_boot=n_boot, seed=seed, metrics=list(metrics))
    return summary


def _summary_columns(metrics: list[str]) -> list[str]:
    fixed = [*POINT_KEYS, "n", "n_samples", "n_seeds", "n_error", "top_error", "random_weights", "weights"]
    per_metric = [f"{m}_{s}" for m in metrics for s in ("mean", "ci_low", "ci_high", "n", "n_inf")]
    return [*fixed, "time_invert_s", "time_edit_s", *per_metric]


def pareto_front(
    points: pd.DataFrame, x: str, y: str, x_lower_better: bool = True, y_higher_better: bool = True
) -> pd.DataFrame:
    """The rows of `points` that no other row beats on both columns `x` and `y`, sorted by x.

    A row is dominated when another is at least as good on both and strictly better on one;
    identical rows do not dominate each other. Rows with NaN in x or y are ignored.
    """
    valid = points.dropna(subset=[x, y])
    a = valid[x].to_numpy(dtype=float) * (1 if x_lower_better else -1)
    b = valid[y].to_numpy(dtype=float) * (-1 if y_higher_better else 1)
    no_worse = (a[:, None] <= a[None, :]) & (b[:, None] <= b[None, :])
    better = (a[:, None] < a[None, :]) | (b[:, None] < b[None, :])
    dominated = (no_worse & better).any(axis=0)
    return valid[~dominated].sort_values(x, kind="stable")


def label_points(points: pd.DataFrame) -> pd.Series:
    """A short label per point naming only what varies within its method's sweep.

    E.g. "guidance=7.5" when a method was swept over guidance only; the backbone is named when a
    method ran on several; a parameter that varies in both invert and edit params is prefixed
    ("invert.steps=10"); "default" when the method has a single point.
    """
    labels = pd.Series("default", index=points.index, dtype="str")
    for _, group in points.groupby("method", sort=False):
        varying = _varying_params(group)
        for idx, params in zip(group.index, _flat_params(group), strict=True):
            parts = [f"{name}={_fmt(params.get(path, _MISSING))}" for path, name in varying]
            if parts:
                labels[idx] = ", ".join(parts)
    return labels


_MISSING = object()


def _flat_params(points: pd.DataFrame) -> list[dict[tuple[str, str], Any]]:
    """Per point: {(section, dotted key): value} over backbone, invert and edit params."""
    out = []
    for _, row in points.iterrows():
        flat: dict[tuple[str, str], Any] = {("", "backbone"): row["backbone"]}
        for section in ("invert", "edit"):
            raw = row[f"{section}_params"]
            flat.update({(section, k): v for k, v in _flatten(json.loads(raw) if isinstance(raw, str) else {}).items()})
        out.append(flat)
    return out


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _varying_params(points: pd.DataFrame) -> list[tuple[tuple[str, str], str]]:
    """[(path, display name)] of the parameters whose value differs between `points`."""
    flats = _flat_params(points)
    paths = sorted({p for flat in flats for p in flat}, key=lambda p: ({"": 0, "invert": 1, "edit": 2}[p[0]], p[1]))
    varying = [p for p in paths if len({json.dumps(f.get(p, "\0missing"), sort_keys=True) for f in flats}) > 1]
    keys = [k for _, k in varying]
    return [((s, k), k if keys.count(k) == 1 or not s else f"{s}.{k}") for s, k in varying]


def _fmt(value: Any) -> str:
    if value is _MISSING or value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def sort_points(points: pd.DataFrame) -> pd.DataFrame:
    """Points sorted by method, dataset, backbone, then their varying parameters (numerically)."""
    points = points.reset_index(drop=True)
    sort_keys: list[tuple] = [()] * len(points)
    for _, group in points.groupby("method", sort=False):
        varying = _varying_params(group)
        for idx, params in zip(group.index, _flat_params(group), strict=True):
            values = tuple(_sortable(params.get(path, _MISSING)) for path, _ in varying)
            sort_keys[idx] = (*points.loc[idx, ["method", "dataset", "backbone"]].fillna(""), values)
    return points.iloc[sorted(range(len(points)), key=sort_keys.__getitem__)].reset_index(drop=True)


def _sortable(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0, float(value), ""
    return 1, 0.0, _fmt(value)
