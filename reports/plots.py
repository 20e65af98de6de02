"""Figures of a run: the editability/fidelity trade-off curve and a grid of edited images.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg renderer, without
pyplot, so making a report neither switches the process-wide backend nor leaks open figures.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from editsweep.bench.store import RunStore
from editsweep.reports.aggregate import (
    POINT_KEYS,
    label_points,
    metric_info,
    pareto_front,
    sort_points,
    summary_metrics,
    uses_toy_weights,
)

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: not comparable to published numbers"
TOY_WEIGHTS_NOTE = "TOY WEIGHTS (trained on the toy world): not comparable to published numbers"


def weights_note(frame: pd.DataFrame) -> str | None:
    """The warning a figure of these rows carries: random weights first, then toy weights, else None."""
    random, toy = frame["random_weights"].eq(True).any(), uses_toy_weights(frame["weights"])
    if random and toy:
        return "TOY WEIGHTS and some RANDOM WEIGHTS: not comparable to published numbers"
    return RANDOM_WEIGHTS_NOTE if random else TOY_WEIGHTS_NOTE if toy else None


def axis_label(metric: str) -> str:
    """E.g. "LPIPS (lower = more faithful)"; unknown metrics say their direction is unknown."""
    info = metric_info(metric)
    if info.higher_is_better is None:
        return f"{info.display} (direction unknown)"
    direction = "higher" if info.higher_is_better else "lower"
    meaning = info.meaning or "better"
    return f"{info.display} ({direction} = {meaning})"


def tradeoff_plot(summary: pd.DataFrame, path: str | Path, x: str = "lpips", y: str = "clip_t") -> Path:
    """Plot y against x for every sweep point, one curve per (method, dataset[, backbone]).

    Each curve runs through its method's sweep points ordered by x, with error bars from the
    bootstrap CIs and the point labels written next to the points. The wide grey band is the Pareto
    front over all points (directions from `metric_info`; unknown ones count as higher-better).
    Raises ValueError when x or y has no finite mean in `summary`.
    """
    return tradeoff_panels(summary, path, [(x, y)])


def tradeoff_panels(summary: pd.DataFrame, path: str | Path, pairs: list[tuple[str, str]]) -> Path:
    """Trade-off plots side by side in one figure, one panel per (x, y) pair (e.g. CLIP-T and
    CSFID, both against LPIPS). Raises ValueError when a pair has no finite means."""
    for x, y in pairs:
        for metric in (x, y):
            if metric not in summary_metrics(summary) or not np.isfinite(summary[f"{metric}_mean"]).any():
                raise ValueError(f"no finite {metric!r} scores in the summary: cannot plot {y} against {x}")
    fig = Figure(figsize=(8 * len(pairs), 6), layout="constrained")
    for ax, (x, y) in zip(np.atleast_1d(fig.subplots(1, len(pairs))), pairs):
        _draw_tradeoff(ax, summary, x, y)
    fig.savefig(path, dpi=120)
    return Path(path)


def _draw_tradeoff(ax: Axes, summary: pd.DataFrame, x: str, y: str) -> None:
    points = summary.dropna(subset=[f"{x}_mean", f"{y}_mean"])
    points = points[np.isfinite(points[f"{x}_mean"]) & np.isfinite(points[f"{y}_mean"])]
    series = ["method", "dataset"] + (["backbone"] if summary["backbone"].nunique() > 1 else [])
    for key, curve in points.groupby(series, sort=False):
        curve = curve.sort_values(f"{x}_mean")
        ax.errorbar(
            curve[f"{x}_mean"],
            curve[f"{y}_mean"],
            xerr=_err(curve, x),
            yerr=_err(curve, y),
            marker="o",
            capsize=3,
            label=" / ".join(str(k) for k in key if k),
        )
        for _, point in curve.iterrows():
            ax.annotate(
                point["label"],
                (point[f"{x}_mean"], point[f"{y}_mean"]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                alpha=0.8,
            )
    front = pareto_front(
        points,
        f"{x}_mean",
        f"{y}_mean",
        x_lower_better=metric_info(x).higher_is_better is False,
        y_higher_better=metric_info(y).higher_is_better is not False,
    )
    ax.plot(
        front[f"{x}_mean"],
        front[f"{y}_mean"],
        color="grey",
        linewidth=8,
        alpha=0.3,
        solid_capstyle="round",
        label="Pareto front (all points)",
        zorder=0,
    )
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ci = summary.attrs.get("ci")
    title = f"{metric_info(y).display} vs {metric_info(x).display}"
    title += f" (error bars: {ci:.0%} bootstrap CI)" if ci else " (error bars: bootstrap CI)"
    note = weights_note(summary)
    ax.set_title(f"{note}\n{title}" if note else title, color="darkred" if note else "black")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _err(curve: pd.DataFrame, metric: str) -> np.ndarray:
    """Asymmetric error bar lengths (2, N) from the CI columns; 0 where the CI is undefined."""
    mean = curve[f"{metric}_mean"].to_numpy()
    err = np.stack([mean - curve[f"{metric}_ci_low"].to_numpy(), curve[f"{metric}_ci_high"].to_numpy() - mean])
    return np.nan_to_num(err.clip(min=0))


def image_grid(
    store: RunStore,
    results: pd.DataFrame,
    path: str | Path,
    max_rows: int = 4,
    max_cols: int = 8,
) -> Path:
    """A grid of edits: one row per sample (first `max_rows`, lowest seed), one column per sweep point.

    When the rows name the input as the method saw it (`input_path`), the first column shows it. Columns are spread evenly over the sweep
    points when there are more than `max_cols`; failed or missing edits are grey cells. Raises
    ValueError when `results` has no ok row with an image.
    """
    ok = results[results["status"].eq("ok") & results["image_path"].notna()]
    if ok.empty:
        raise ValueError("no ok rows with an image: nothing to show in the grid")
    ok = ok.assign(backbone=ok["backbone"].fillna(""))
    col_keys = [k for k in POINT_KEYS if k != "dataset"]
    points = results[POINT_KEYS].assign(backbone=results["backbone"].fillna("")).drop_duplicates()
    points = sort_points(points.assign(label=label_points(points)))
    columns = points.merge(ok[POINT_KEYS].drop_duplicates(), on=POINT_KEYS).drop_duplicates(col_keys)
    if len(columns) > max_cols:
        columns = columns.iloc[np.linspace(0, len(columns) - 1, max_cols).round().astype(int)]
    first_seed = ok.sort_values("seed").drop_duplicates(["dataset", "sample_id"])
    samples = first_seed.sort_values(["dataset", "sample_id"]).head(max_rows)
    cells = ok.merge(samples[["dataset", "sample_id", "seed"]], on=["dataset", "sample_id", "seed"])
    cells = cells.set_index([*col_keys, "dataset", "sample_id"])["image_path"]

    first = 1 if samples["input_path"].notna().any() else 0
    n_rows, n_cols = len(samples), len(columns) + first
    fig = Figure(figsize=(1.9 * n_cols, 2.1 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, sample in enumerate(samples.itertuples()):
        if first:
            _show(axes[r, 0], *_load(store, sample.input_path), "input" if r == 0 else "")
        prompt = textwrap.shorten(str(sample.target_prompt), 60)
        axes[r, 0].set_ylabel(textwrap.fill(f"{sample.dataset}/{sample.sample_id}: {prompt}", 24), fontsize=7)
        for c, col in enumerate(columns.itertuples(), start=first):
            rel = cells.get((*(getattr(col, k) for k in col_keys), sample.dataset, sample.sample_id))
            title = textwrap.fill(f"{col.method} {col.label}", 22) if r == 0 else ""
            _show(axes[r, c], *_load(store, rel), title)
    if note := weights_note(results):
        fig.suptitle(note, color="darkred", fontsize=9)
    fig.savefig(path, dpi=100)
    return Path(path)


def _load(store: RunStore, rel: object) -> tuple[Image.Image | None, str]:
    """The stored image at `rel`, or None and why not."""
    if not isinstance(rel, str):
        return None, "no image"
    try:
        return store.read_image(rel), ""
    except OSError:
        return None, "image missing"


def _show(ax: Axes, image: Image.Image | None, note: str, title: str) -> None:
    """Draw an image (or a grey cell with `note`) without ticks."""
    ax.imshow(np.asarray(image) if image is not None else np.full((8, 8, 3), 0.85))
    if note:
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
