"""Matched-fidelity comparison: editability read off each method's curve at fixed fidelity levels.

Issue 14, item 1. A method's sweep points in a dataset (one curve per method, backbone and dtype)
give a curve of (fidelity mean, editability mean), e.g. (LPIPS, CLIP-T) as in the seed papers'
"CLIP-T at LPIPS 0.1/0.2/0.3" tables (METRICS.md, TEdBench). At each fidelity level the curve's
editability is linearly interpolated between the two points that bracket the level, the points
taken in order of their fidelity mean (not of the swept parameter: a curve that turns back in
fidelity is still read in fidelity order). A level outside [min, max] of a curve's fidelity means
is "not reached": there is no extrapolation.

Uncertainty comes from a paired cluster bootstrap over samples: every method saw the same inputs,
so a resample draws sample ids with replacement and keeps each drawn sample's seeds and every
method's images of it together (multinomial weights on per-sample sums, `_point_means`). Each
resample recomputes every point mean, re-reads every curve at every level and takes the
differences; shared per-sample difficulty then cancels in a difference. The intervals are
percentile intervals over the resamples in which the level is reached; the share of resamples in
which it is not is reported beside them. The resampling is done with numpy rather than
`scipy.stats.bootstrap` because one set of resamples has to serve all methods, levels and pairs
at once, and because the not-reached share is part of the result.

Set-level metrics (CSFID, SFID, FID, KID: `reports/set_level/`) have one value per sweep point,
not per sample, so they are read off the curve of point means with no CI and no p-value.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from editsweep.reports.aggregate import POINT_KEYS, metric_info
from editsweep.reports.leaderboard import format_ci
from editsweep.reports.plots import axis_label, weights_note

CURVE_KEYS = ["method", "backbone", "dtype"]
_BAND_POINTS = 41  # fidelity values at which the plot's CI band is evaluated per curve
_EDGE_TOL = 1e-9  # a level this close (relative to the curve's span) to an end counts as reached


@dataclass(frozen=True)
class MatchedOptions:
    """What to compare: fidelity metric, editability metrics, levels (None: chosen per dataset)."""

    fidelity: str = "lpips"
    metrics: tuple[str, ...] = ("clip_t",)
    levels: tuple[float, ...] | None = None
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0


@dataclass
class MatchedResult:
    """Values per (dataset, metric, level, curve), differences per pair, and what the plot draws."""

    options: MatchedOptions
    values: pd.DataFrame
    pairs: pd.DataFrame
    curves: pd.DataFrame  # the curves' points: dataset, metric, curve, x, y
    bands: pd.DataFrame  # dataset, metric, curve, x, low, high
    diff_bands: pd.DataFrame  # dataset, metric, curve, reference, x, diff (> 0: curve better), low, high
    levels: dict[str, list[float]]
    level_notes: dict[str, str]
    notes: list[str] = field(default_factory=list)


def interpolate(x: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Each row's curve (x[i], y[i]) read at `levels`: linear between the bracketing points.

    Points are sorted by x (ties by y; points with a non-finite coordinate are left out), as
    `np.interp` would read them, for all rows at once; a level outside the row's [min x, max x]
    (beyond a rounding slack of `_EDGE_TOL` x the span, so that a level equal to an end point's
    mean is reached), or a row with fewer than two points, gives NaN ("not reached"). x and y are
    (n_curves, n_points) or (n_points,); the result is (n_curves, n_levels).
    """
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    level = np.asarray(levels, dtype=float)[None, :]
    if x.shape[1] < 2:
        return np.full((len(x), level.shape[1]), np.nan)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    order = np.lexsort((np.where(bad, np.inf, y), np.where(bad, np.inf, x)), axis=-1)
    xs, ys = np.take_along_axis(np.where(bad, np.inf, x), order, 1), np.take_along_axis(y, order, 1)
    n = (~bad).sum(axis=1)[:, None]
    first, last = xs[:, :1], np.take_along_axis(xs, np.maximum(n - 1, 0), 1)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows with < 2 points: inf - inf, masked below
        slack = _EDGE_TOL * np.where(n >= 2, last - first, 0.0)
        reached = (n >= 2) & (level >= first - slack) & (level <= last + slack)
        level = np.clip(level, first, np.where(n >= 2, last, first))
        upper = np.clip((xs[:, :, None] <= level[:, None, :]).sum(axis=1), 1, np.maximum(n - 1, 1))
        x0, x1 = np.take_along_axis(xs, upper - 1, 1), np.take_along_axis(xs, upper, 1)
        y0, y1 = np.take_along_axis(ys, upper - 1, 1), np.take_along_axis(ys, upper, 1)
        value = np.where(x1 > x0, y0 + (level - x0) / (x1 - x0) * (y1 - y0), y1)
    return np.where(reached, value, np.nan)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979); NaN entries are left out of the family.

    Written out because scipy has only Benjamini-Hochberg (`false_discovery_control`) and
    statsmodels is not a dependency: sort ascending, multiply the k-th smallest by (m - k + 1),
    take the running maximum, cap at 1.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def bootstrap_p(diffs: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "difference = 0" per column of `diffs` (resamples x levels).

    2 x the share of resampled differences on the far side of 0 (ties count on both sides), with
    the +1 correction (Davison & Hinkley 1997, eq. 4.11) so that B resamples never give p = 0;
    capped at 1. NaN resamples (level not reached) are left out; NaN when none is left.
    """
    n = np.isfinite(diffs).sum(axis=0)
    low, high = (diffs <= 0).sum(axis=0), (diffs >= 0).sum(axis=0)
    p = np.minimum(1.0, 2 * (np.minimum(low, high) + 1) / (n + 1))
    return np.where(n > 0, p, np.nan)


def default_levels(curves: dict[str, np.ndarray]) -> tuple[list[float], str]:
    """Three levels and how they were chosen, from each curve's fidelity means.

    The quartiles (25/50/75 %) of the range every curve covers (the largest minimum to the smallest
    maximum), rounded to 2 significant digits; when the curves do not overlap, of the range any
    covers (then some curves do not reach some levels).
    """
    spans = [(np.nanmin(x), np.nanmax(x)) for x in curves.values() if np.isfinite(x).sum() >= 2]
    if not spans:
        return [], "no curve has two points"
    low, high = max(s[0] for s in spans), min(s[1] for s in spans)
    how = "quartiles of the range every method covers"
    if not low < high:
        low, high = min(s[0] for s in spans), max(s[1] for s in spans)
        how = "the methods' ranges do not overlap: quartiles of the range any method covers"
    levels = sorted({float(f"{low + q * (high - low):.2g}") for q in (0.25, 0.5, 0.75)})
    return levels, f"{how} ({low:.3g} to {high:.3g}), rounded to 2 significant digits"


def _curve_names(keys: list[tuple[str, str, str]]) -> list[str]:
    """The method alone, or "method (backbone, dtype)" when a method has several curves."""
    methods = [k[0] for k in keys]
    return [k[0] if methods.count(k[0]) == 1 else f"{k[0]} ({k[1]}, {k[2]})" for k in keys]


def _point_means(weights: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Point means (resamples x points) from per-sample sums and counts (points x samples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ sums.T) / (weights @ counts.T)


def _quantiles(values: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI ends per column over the finite resamples (NaN where none is finite)."""
    low, high = np.full(values.shape[1:], np.nan), np.full(values.shape[1:], np.nan)
    cols = np.isfinite(values).any(axis=0)
    if cols.any():
        q = np.nanquantile(values[:, cols], [(1 - ci) / 2, (1 + ci) / 2], axis=0)
        low[cols], high[cols] = q
    return low, high


class _Curves:
    """One dataset's ok rows as per-(point, sample) sums and counts, grouped into curves.

    Resampling weights are per sample (`weights[name]`: resamples x samples, the same array for
    every curve when paired), so a point mean over a resample is a weighted ratio of sums.
    """

    def __init__(self, rows: pd.DataFrame, scores: pd.DataFrame, options: MatchedOptions, paired: bool, seed: int):
        self.rows, self.scores = rows, scores
        self.sample_codes, samples = pd.factorize(rows["sample_id"])
        self.point_codes, points = pd.factorize(pd.MultiIndex.from_frame(rows[POINT_KEYS].astype(str)))
        self.shape = (len(points), len(samples))
        keys = sorted({(p[0], p[2], p[3]) for p in points})
        self.names = _curve_names(keys)
        self.keys = dict(zip(self.names, keys, strict=True))
        self.members = {n: [i for i, p in enumerate(points) if (p[0], p[2], p[3]) == k] for n, k in self.keys.items()}
        rng = np.random.default_rng(seed)
        n = len(samples)
        draws = rng.multinomial(n, np.full(n, 1 / n), size=(1 if paired else len(self.names), options.n_boot))
        self.weights = {name: draws[0 if paired else i].astype(float) for i, name in enumerate(self.names)}
        self.ones = np.ones((1, n))

    def has(self, metric: str) -> bool:
        """Whether some image of this dataset has a `metric` score."""
        return metric in self.scores and self.scores.loc[self.rows.index, metric].notna().any()

    def sums_counts(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Per (point, sample): sum and count of the finite `metric` scores."""
        v = self.scores.loc[self.rows.index, metric].to_numpy()
        finite = np.isfinite(v)
        sums, counts = np.zeros(self.shape), np.zeros(self.shape)
        np.add.at(sums, (self.point_codes, self.sample_codes), np.where(finite, v, 0.0))
        np.add.at(counts, (self.point_codes, self.sample_codes), finite)
        return sums, counts

    def means(self, sums_counts: tuple[np.ndarray, np.ndarray], name: str, resampled: bool) -> np.ndarray:
        """The curve's point means: (resamples, points) when `resampled`, else (points,)."""
        sums, counts = (a[self.members[name]] for a in sums_counts)
        means = _point_means(self.weights[name] if resampled else self.ones, sums, counts)
        return means if resampled else means[0]

    def coverage_note(self, dataset: str) -> str | None:
        """A note when the curves were scored on different samples (then they are not fully paired)."""
        counts = pd.Series(self.sample_codes).groupby(self.point_codes).unique()
        per_curve = {n: len(set(np.concatenate([counts[i] for i in m]))) for n, m in self.members.items()}
        if len(set(per_curve.values())) <= 1:
            return None
        listed = ", ".join(f"{n}: {k}" for n, k in per_curve.items())
        return f"{dataset}: methods were scored on different samples ({listed} of {self.shape[1]}); pairing is partial"


def matched_comparison(
    results: pd.DataFrame,
    summary: pd.DataFrame | None = None,
    options: MatchedOptions | None = None,
    paired: bool = True,
) -> MatchedResult:
    """Every curve read at the fidelity levels, and every pair of curves compared, per dataset.

    `results` is `RunStore.read_results()`; `summary` (from `aggregate`, with set metrics merged)
    is needed only for set-level metrics. `paired=False` resamples each curve's samples
    independently (what an unpaired analysis would do; for comparison only). Difference columns
    are signed so that > 0 means the first curve of the pair is better (`metric_info`'s
    `higher_is_better`; an unknown direction counts as higher-better and says so in the notes).
    """
    options = options or MatchedOptions()
    ok = results[results["status"].eq("ok")].assign(backbone=lambda f: f["backbone"].fillna(""))
    scores = pd.DataFrame([s or {} for s in ok["scores"]], index=ok.index, dtype="float64")
    notes: list[str] = []
    if options.fidelity not in scores:
        notes.append(f"no {options.fidelity} scores: no matched-fidelity comparison")
        return _result(options, [], [], [], [], [], {}, {}, notes)
    for metric in options.metrics:
        if metric not in scores and (summary is None or f"{metric}_mean" not in summary):
            notes.append(f"matched comparison: no {metric} scores in this run")
        elif metric_info(metric).higher_is_better is None:
            notes.append(f"matched comparison: direction of {metric} unknown, higher counted as better")

    values, pairs, curves, bands, diff_bands = [], [], [], [], []
    all_levels, level_notes = {}, {}
    for dataset, rows in ok.groupby("dataset", sort=True):
        curve_of = pd.Series(list(zip(*(rows[k].astype(str) for k in ("method", "backbone", "dtype")))), index=rows.index)
        n_points = rows[["invert_params", "edit_params"]].astype(str).groupby(curve_of).apply(
            lambda f: len(f.drop_duplicates())
        )
        if single := sorted(n_points.index[n_points < 2]):
            names = ", ".join(_curve_names(single))
            notes.append(f"{dataset}: {names} left out of the matched comparison (one sweep point, no curve)")
            rows = rows[~curve_of.isin(single)]
        if rows.empty:
            continue
        data = _Curves(rows, scores, options, paired, seed=[options.seed, zlib.crc32(str(dataset).encode())])
        if note := data.coverage_note(dataset):
            notes.append(note)
        x_sc = data.sums_counts(options.fidelity)
        x_full = {n: data.means(x_sc, n, resampled=False) for n in data.names}
        if options.levels is not None:
            levels = list(options.levels)
        else:
            levels, level_notes[dataset] = default_levels(x_full)
        all_levels[dataset] = levels
        if not levels:
            continue
        for metric in options.metrics:
            sign = -1.0 if metric_info(metric).higher_is_better is False else 1.0
            if data.has(metric):
                xy, boot, band_rows, diff_rows = _resample(data, x_sc, x_full, metric, levels, sign, options.ci)
                bands += [(dataset, metric, *r) for r in band_rows]
                diff_bands += [(dataset, metric, *r) for r in diff_rows]
            elif summary is not None and f"{metric}_mean" in summary:
                xy = _summary_curves(summary, dataset, metric, options.fidelity, data.keys)
                boot = None  # set-level: one value per point, nothing to resample
            else:
                continue
            curves += [(dataset, metric, n, x, y) for n in data.names for x, y in zip(*xy[n], strict=True)]
            v_rows, p_rows = _compare(xy, boot, levels, sign, options.ci)
            values += [(dataset, metric, *r) for r in v_rows]
            pairs += [(dataset, metric, *r) for r in p_rows]
    return _result(options, values, pairs, curves, bands, diff_bands, all_levels, level_notes, notes)


def _resample(
    data: _Curves,
    x_sc: tuple[np.ndarray, np.ndarray],
    x_full: dict[str, np.ndarray],
    metric: str,
    levels: list[float],
    sign: float,
    ci: float,
) -> tuple[dict, dict[str, np.ndarray], list[tuple], list[tuple]]:
    """Curves of a per-image metric, read at the levels in every resample, and the plot's bands.

    Returns the full-data curves {name: (x, y)}, the resampled reads {name: (resamples, levels)},
    band rows (curve, x, low, high) on each curve's own range, and difference-band rows
    (curve, reference, x, diff, low, high) of each curve against the first, on a shared grid.
    """
    y_sc = data.sums_counts(metric)
    common = _grid(np.concatenate(list(x_full.values())))
    xy, boot, on_common, bands, diff_bands = {}, {}, {}, [], []
    for n in data.names:
        xy[n] = (x_full[n], data.means(y_sc, n, resampled=False))
        grid = _grid(x_full[n])
        x_boot, y_boot = data.means(x_sc, n, resampled=True), data.means(y_sc, n, resampled=True)
        read = interpolate(x_boot, y_boot, [*levels, *grid, *common])
        boot[n] = read[:, : len(levels)]
        low, high = _quantiles(read[:, len(levels) : len(levels) + len(grid)], ci)
        bands += [(n, *t) for t in zip(grid, low, high, strict=True)]
        on_common[n] = (interpolate(*xy[n], common)[0], read[:, len(levels) + len(grid) :])
    reference = data.names[0]
    for n in data.names[1:]:
        diff = sign * (on_common[n][0] - on_common[reference][0])
        low, high = _quantiles(sign * (on_common[n][1] - on_common[reference][1]), ci)
        keep = np.isfinite(diff)
        diff_bands += [(n, reference, *t) for t in zip(common[keep], diff[keep], low[keep], high[keep], strict=True)]
    return xy, boot, bands, diff_bands


def _compare(
    xy: dict[str, tuple[np.ndarray, np.ndarray]],
    boot: dict[str, np.ndarray] | None,
    levels: list[float],
    sign: float,
    ci: float,
) -> tuple[list[tuple], list[tuple]]:
    """Value rows (level, curve, value, ci_low, ci_high, not_reached) and pair rows (level, a, b,
    diff, ci_low, ci_high, p, not_reached); without resamples (`boot` None) no CI, p or share."""
    nan = np.full(len(levels), np.nan)
    est = {n: interpolate(*xy[n], levels)[0] for n in xy}
    values, pairs = [], []
    for n in xy:
        low, high = _quantiles(boot[n], ci) if boot else (nan, nan)
        missed = np.isnan(boot[n]).mean(axis=0) if boot else nan
        values += [(level, n, *t) for level, *t in zip(levels, est[n], low, high, missed, strict=True)]
    for a, b in itertools.combinations(xy, 2):
        diff = sign * (est[a] - est[b])
        if boot:
            d_boot = sign * (boot[a] - boot[b])
            low, high = _quantiles(d_boot, ci)
            p = np.where(np.isfinite(diff), bootstrap_p(d_boot), np.nan)
            missed = np.isnan(d_boot).mean(axis=0)
        else:
            low = high = p = missed = nan
        pairs += [(level, a, b, *t) for level, *t in zip(levels, diff, low, high, p, missed, strict=True)]
    return values, pairs


def _grid(x: np.ndarray) -> np.ndarray:
    """Fidelity values spanning the points `x`, where the plot's bands are evaluated."""
    finite = x[np.isfinite(x)]
    return np.linspace(finite.min(), finite.max(), _BAND_POINTS) if len(finite) >= 2 else np.array([])


def _summary_curves(
    summary: pd.DataFrame, dataset: str, metric: str, fidelity: str, keys: dict[str, tuple[str, str, str]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(fidelity means, metric means) per curve from the summary, for a set-level metric."""
    table = summary[summary["dataset"].astype(str).eq(str(dataset))]
    curve_of = table[CURVE_KEYS].fillna("").astype(str)
    out = {}
    for name, key in keys.items():
        rows = table[(curve_of == list(key)).all(axis=1)]
        out[name] = (rows[f"{fidelity}_mean"].to_numpy(float), rows[f"{metric}_mean"].to_numpy(float))
    return out


def _result(
    options: MatchedOptions,
    values: list,
    pairs: list,
    curves: list,
    bands: list,
    diff_bands: list,
    levels: dict[str, list[float]],
    level_notes: dict[str, str],
    notes: list[str],
) -> MatchedResult:
    """Frames from the collected tuples, with Holm's adjustment over the pairs of each level."""
    value_cols = ["dataset", "metric", "level", "curve", "value", "ci_low", "ci_high", "not_reached"]
    pair_cols = ["dataset", "metric", "level", "a", "b", "diff", "ci_low", "ci_high", "p", "not_reached"]
    values_df = pd.DataFrame(values, columns=value_cols)
    pairs_df = pd.DataFrame(pairs, columns=pair_cols)
    pairs_df["p_holm"] = pairs_df.groupby(["dataset", "metric", "level"])["p"].transform(lambda p: holm(p.to_numpy()))
    for side in ("a", "b"):
        renamed = {"curve": side, "value": f"value_{side}", "not_reached": f"not_reached_{side}"}
        renamed |= {f"ci_{end}": f"value_{side}_ci_{end}" for end in ("low", "high")}
        own = values_df.rename(columns=renamed)
        pairs_df = pairs_df.merge(own, on=["dataset", "metric", "level", side], how="left")
    return MatchedResult(
        options,
        values_df,
        pairs_df,
        pd.DataFrame(curves, columns=["dataset", "metric", "curve", "x", "y"]),
        pd.DataFrame(bands, columns=["dataset", "metric", "curve", "x", "low", "high"]),
        pd.DataFrame(diff_bands, columns=["dataset", "metric", "curve", "reference", "x", "diff", "low", "high"]),
        levels,
        level_notes,
        notes,
    )


def matched_eligible(results: pd.DataFrame, options: MatchedOptions, summary: pd.DataFrame | None = None) -> str | None:
    """None when the comparison can be made, else why not.

    It can when some dataset has two curves with >= 2 sweep points scored on the fidelity metric
    and one of the editability metrics has values (per image, or as a set metric in `summary`).
    """
    ok = results[results["status"].eq("ok")].assign(backbone=lambda f: f["backbone"].fillna(""))
    scores = pd.DataFrame([s or {} for s in ok["scores"]], index=ok.index, dtype="float64")
    available = [
        m
        for m in options.metrics
        if (m in scores and scores[m].notna().any())
        or (summary is not None and f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any())
    ]
    if not available:
        return f"no {' or '.join(options.metrics)} scores in this run"
    if options.fidelity not in scores:
        return f"no {options.fidelity} scores in this run"
    scored = ok[np.isfinite(scores[options.fidelity].to_numpy())].astype({k: str for k in POINT_KEYS})
    points = scored.groupby(["dataset", *CURVE_KEYS])[["invert_params", "edit_params"]]
    per_curve = points.apply(lambda f: len(f.drop_duplicates()))
    if (per_curve.ge(2).groupby(level="dataset").sum() >= 2).any():
        return None
    return f"no dataset has two methods with at least two sweep points scored on {options.fidelity}"


def _fmt_value(value: float, low: float, high: float, missed: float) -> str:
    """"mean ± half-CI", "not reached", or the mean alone (no CI), plus the not-reached share."""
    if not math.isfinite(value):
        return "not reached"
    text = format_ci(value, low, high) if math.isfinite(low) else f"{value:.4g}"
    return text + (f" (n.r. {missed:.0%})" if missed > 0 else "")


def _fmt_p(p: float) -> str:
    return "–" if not math.isfinite(p) else f"{p:.2g}" if p >= 0.001 else "<0.001"


def matched_markdown(result: MatchedResult, results: pd.DataFrame | None = None) -> str:
    """A table per (dataset, metric): level, pair, difference with CI, Holm p, each curve's value."""
    opts = result.options
    fid = metric_info(opts.fidelity)
    lines = ["# Matched-fidelity comparison", ""]
    if results is not None and (note := weights_note(results)):
        lines += [f"> **Warning: {note}.**", ""]
    lines += [
        f"Each method's sweep points, ordered by mean {fid.display}, form a curve; the editability metric is "
        f"read off it at fixed {fid.display} levels by linear interpolation between the two bracketing points. "
        f'A level outside the range a method\'s points cover is "not reached" (no extrapolation). '
        f"A − B > 0 means A is better (by the metric's direction). CI: {opts.ci:.0%} paired percentile "
        f"bootstrap over samples ({opts.n_boot} resamples; each sample's seeds and every method's images of it "
        "are resampled together). p: two-sided bootstrap p of A − B = 0, Holm-adjusted over the method pairs "
        'of each (dataset, metric, level). "n.r. x%": share of resamples in which the level was not reached, '
        "left out of that CI. Set-level metrics (one value per sweep point) have no paired CI.",
        "",
    ]
    if result.pairs.empty:
        lines += ["No pair of methods to compare.", ""]
    for (dataset, metric), table in result.pairs.groupby(["dataset", "metric"], sort=False):
        info = metric_info(metric)
        arrow = {True: " ↑", False: " ↓", None: ""}[info.higher_is_better]
        lines += [f"## {dataset}: {info.display}{arrow} at matched {fid.display}", ""]
        levels = ", ".join(f"{v:g}" for v in result.levels.get(dataset, []))
        how = result.level_notes.get(dataset)
        lines += [f"Levels: {levels}" + (f" ({how})." if how else " (from the spec)."), ""]
        if table["ci_low"].isna().all() and table["diff"].notna().any():
            lines += [f"{info.display} is a set-level metric: values read off the point means, no paired CI.", ""]
        header = [fid.display, "A", "B", "A − B", f"{opts.ci:.0%} CI", "Holm p", "A value", "B value"]
        lines += [_row(header), _row(["---"] * len(header))]
        for _, r in table.iterrows():
            if math.isfinite(r["diff"]):
                diff = f"{r['diff']:+.4g}"
                ci = f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]" if math.isfinite(r["ci_low"]) else "–"
                if r["not_reached"] > 0:
                    ci += f" (n.r. {r['not_reached']:.0%})"
            else:
                diff, ci = "not reached", "–"
            cells = [f"{r['level']:g}", r["a"], r["b"], diff, ci, _fmt_p(r["p_holm"])]
            cells += [
                _fmt_value(r[f"value_{s}"], r[f"value_{s}_ci_low"], r[f"value_{s}_ci_high"], r[f"not_reached_{s}"])
                for s in ("a", "b")
            ]
            lines.append(_row(cells))
        lines.append("")
    if result.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in result.notes), ""]
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def matched_figure(result: MatchedResult, results: pd.DataFrame | None = None) -> Figure:
    """One column per (dataset, metric): the curves with CI bands, and below, the paired differences.

    Top: each curve's point means joined in fidelity order, with the pointwise bootstrap CI of the
    interpolated curve as a band. Bottom (per-image metrics): each curve minus the first one
    (> 0: better), with its paired bootstrap CI as a band; where a band leaves 0 the two differ at
    that fidelity. Dotted vertical lines mark the levels.
    """
    panels = list(result.curves.groupby(["dataset", "metric"], sort=False).groups)
    names = list(dict.fromkeys(result.curves["curve"]))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colour = {n: palette(i % palette.N) for i, n in enumerate(names)}
    n_rows = 2 if len(result.diff_bands) else 1
    fig = Figure(figsize=(6.5 * max(1, len(panels)), 4.5 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, max(1, len(panels)), squeeze=False)
    note = weights_note(results) if results is not None else None
    fid = metric_info(result.options.fidelity).display
    for col, (dataset, metric) in enumerate(panels):
        ax = axes[0, col]
        of_panel = (result.curves["dataset"] == dataset) & (result.curves["metric"] == metric)
        band_rows = result.bands[(result.bands["dataset"] == dataset) & (result.bands["metric"] == metric)]
        for name, curve in result.curves[of_panel].groupby("curve", sort=False):
            curve = curve.sort_values(["x", "y"])
            ax.plot(curve["x"], curve["y"], "o-", color=colour[name], label=name)
            band = band_rows[band_rows["curve"] == name]
            ax.fill_between(band["x"], band["low"], band["high"], color=colour[name], alpha=0.2, linewidth=0)
        title = f"{dataset}: {metric_info(metric).display} at matched {fid}"
        title += f"\n(bands: {result.options.ci:.0%} bootstrap CI over samples; dotted: levels)"
        _decorate(ax, result, dataset, axis_label(metric), f"{note}\n{title}" if note else title, note)
        if n_rows == 2:
            ax = axes[1, col]
            all_diffs = result.diff_bands
            diffs = all_diffs[(all_diffs["dataset"] == dataset) & (all_diffs["metric"] == metric)]
            for name, diff in diffs.groupby("curve", sort=False):
                label = f"{name} − {diff['reference'].iloc[0]}"
                ax.plot(diff["x"], diff["diff"], "-", color=colour[name], label=label)
                ax.fill_between(diff["x"], diff["low"], diff["high"], color=colour[name], alpha=0.2, linewidth=0)
            ax.axhline(0, color="black", linewidth=0.8)
            reference = diffs["reference"].iloc[0] if len(diffs) else names[0]
            title = f"difference to {reference} (> 0: better), {result.options.ci:.0%} paired bootstrap CI"
            _decorate(ax, result, dataset, f"{metric_info(metric).display} difference", title, None)
    return fig


def _decorate(ax: Axes, result: MatchedResult, dataset: str, ylabel: str, title: str, note: str | None) -> None:
    """Level lines, axis labels, title (dark red under a weights warning), grid and legend."""
    for level in result.levels.get(dataset, []):
        ax.axvline(level, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(axis_label(result.options.fidelity))
    ax.set_ylabel(ylabel)
    ax.set_title(title, color="darkred" if note else "black", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_matched(
    result: MatchedResult, out: str | Path, results: pd.DataFrame | None = None
) -> tuple[Path, Path, Path]:
    """Write `matched.md`, `matched.csv` (one row per pair and level) and `matched.png` to `out`."""
    out = Path(out)
    md, csv, png = out / "matched.md", out / "matched.csv", out / "matched.png"
    md.write_text(matched_markdown(result, results))
    result.pairs.to_csv(csv, index=False)
    matched_figure(result, results).savefig(png, dpi=120)
    return md, csv, png
