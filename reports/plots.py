"""Figures of a run: the editability/fidelity trade-off curve and a grid of edited images.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg renderer, without
pyplot, so making a report neither switches the process-wide backend nor leaks open figures.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from adjustText import adjust_text
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
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
    bootstrap CIs and the point labels in the curve's colour, moved apart by adjustText where they
    would overlap. A point far from all others (see `zoomed_view`) is marked by an arrowhead at the edge
    of a view zoomed on the rest, with its values. The wide grey band is the Pareto
    front over all points (directions from `metric_info`; unknown ones count as higher-better).
    Raises ValueError when x or y has no finite mean in `summary`.
    """
    return tradeoff_panels(summary, path, [(x, y)])


def tradeoff_panels(summary: pd.DataFrame, path: str | Path, pairs: list[tuple[str, str]]) -> Path:
    """Trade-off plots side by side in one figure (`tradeoff_figure`), saved to `path`."""
    tradeoff_figure(summary, pairs).savefig(path, dpi=120)
    return Path(path)


def tradeoff_figure(summary: pd.DataFrame, pairs: list[tuple[str, str]]) -> Figure:
    """One panel per (x, y) pair (e.g. CLIP-T and CSFID, both against LPIPS), with one legend: a
    curve has the same colour in every panel. Raises ValueError when a pair has no finite means."""
    for x, y in pairs:
        for metric in (x, y):
            if metric not in summary_metrics(summary) or not np.isfinite(summary[f"{metric}_mean"]).any():
                raise ValueError(f"no finite {metric!r} scores in the summary: cannot plot {y} against {x}")
    fig = Figure(figsize=(8 * len(pairs), 6), layout="constrained")
    FigureCanvasAgg(fig)  # adjustText measures the labels with the canvas' renderer
    series = ["method", "dataset"] + (["backbone"] if summary["backbone"].nunique() > 1 else [])
    keys = list(dict.fromkeys(summary[series].itertuples(index=False, name=None)))
    palette = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    colours = {key: palette(i % palette.N) for i, key in enumerate(keys)}
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    labels = [_draw_tradeoff(ax, summary, x, y, series, colours) for ax, (x, y) in zip(axes, pairs)]
    legend = {}
    for ax in axes:
        legend.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels())})
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 4), fontsize=8)
    fig.draw_without_rendering()  # settle the constrained layout before placing the labels in it
    fig.set_layout_engine("none")
    for ax, (texts, targets) in zip(axes, labels):
        if texts:
            adjust_text(
                texts,
                target_x=[t[0] for t in targets],
                target_y=[t[1] for t in targets],
                x=[t[0] for t in targets],
                y=[t[1] for t in targets],
                ax=ax,
                force_text=(0.4, 0.8),
                expand=(1.3, 1.8),
                arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5},
            )
    return fig


def _draw_tradeoff(
    ax: Axes, summary: pd.DataFrame, x: str, y: str, series: list[str], colours: dict[tuple, Any]
) -> tuple[list[Text], list[tuple[float, float]]]:
    """Draw the curves, the Pareto front and the points' labels of one panel; return the labels
    inside the view and the points they name (placed later by adjustText). The legend is the
    figure's, shared by the panels."""
    points = summary.dropna(subset=[f"{x}_mean", f"{y}_mean"])
    points = points[np.isfinite(points[f"{x}_mean"]) & np.isfinite(points[f"{y}_mean"])]
    for key, curve in points.groupby(series, sort=False):
        curve = curve.sort_values(f"{x}_mean")
        ax.errorbar(
            curve[f"{x}_mean"],
            curve[f"{y}_mean"],
            xerr=_err(curve, x),
            yerr=_err(curve, y),
            marker="o",
            capsize=3,
            color=colours[key],
            label=" / ".join(str(k) for k in key if k),
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
    xlim, ylim = zoomed_view(points, x), zoomed_view(points, y)
    if xlim:
        ax.set_xlim(xlim)
    if ylim:
        ax.set_ylim(ylim)
    texts, targets = [], []
    for _, point in points.iterrows():
        colour = colours[tuple(point[k] for k in series)]
        at = (point[f"{x}_mean"], point[f"{y}_mean"])
        if _inside(at[0], xlim) and _inside(at[1], ylim):
            texts.append(ax.text(*at, point["label"], fontsize=7, color=colour))
            targets.append(at)
        else:
            _mark_off_scale(ax, point, x, y, xlim, ylim, colour)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ci = summary.attrs.get("ci")
    title = f"{metric_info(y).display} vs {metric_info(x).display}"
    title += f" (error bars: {ci:.0%} bootstrap CI)" if ci else " (error bars: bootstrap CI)"
    note = weights_note(summary)
    ax.set_title(f"{note}\n{title}" if note else title, color="darkred" if note else "black")
    ax.grid(alpha=0.3)
    return texts, targets


def zoomed_view(points: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """Axis limits that leave out far outliers, or None when every point fits a readable scale.

    A point is far when its mean lies more than 10 median absolute deviations from the median
    (e.g. `copy` at LPIPS 0 and a low CLIP-T, next to editors within 0.02 of each other); the view
    zooms only when the other points, with their CIs, span under half the range of all of them.
    """
    means = points[f"{metric}_mean"].to_numpy(dtype=float)
    centre = np.median(means)
    spread = np.median(np.abs(means - centre))
    near = np.abs(means - centre) <= 10 * spread
    if spread == 0 or near.all():
        return None
    low, high = _extent(points[near], metric)
    full_low, full_high = _extent(points, metric)
    if high - low >= (full_high - full_low) / 2:
        return None
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def _extent(points: pd.DataFrame, metric: str) -> tuple[float, float]:
    """The lowest and highest of the points' means and CI bounds."""
    values = np.concatenate([points[f"{metric}_{part}"].to_numpy(dtype=float) for part in ("mean", "ci_low", "ci_high")])
    return np.nanmin(values), np.nanmax(values)


def _inside(value: float, limits: tuple[float, float] | None) -> bool:
    return limits is None or limits[0] <= value <= limits[1]


def _mark_off_scale(
    ax: Axes,
    point: pd.Series,
    x: str,
    y: str,
    xlim: tuple[float, float] | None,
    ylim: tuple[float, float] | None,
    colour: Any,
) -> None:
    """An arrowhead at the edge of the view, where an off-scale point lies, with its values."""
    at, markers = [], []
    for metric, limits, low_high, axis in ((x, xlim, "<>", 0), (y, ylim, "v^", 1)):
        value = point[f"{metric}_mean"]
        if _inside(value, limits):
            at.append(value)
        else:
            below = value < limits[0]
            at.append(limits[0] if below else limits[1])
            markers.append(low_high[0] if below else low_high[1])
    ax.plot(*at, marker=markers[-1], markersize=10, color=colour, clip_on=False)
    text = (
        f"{point['method']} {point['label']} (off scale): "
        f"{metric_info(x).display} {round(point[f'{x}_mean'], 4):.4g}, "
        f"{metric_info(y).display} {round(point[f'{y}_mean'], 4):.4g}"
    )
    ax.annotate(
        text,
        at,
        xytext=(8 if at[0] < np.mean(ax.get_xlim()) else -8, 8 if at[1] < np.mean(ax.get_ylim()) else -8),
        textcoords="offset points",
        ha="left" if at[0] < np.mean(ax.get_xlim()) else "right",
        va="bottom" if at[1] < np.mean(ax.get_ylim()) else "top",
        fontsize=7,
        color=colour,
    )


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
