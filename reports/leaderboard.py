"""The leaderboard: a markdown table per dataset, one row per sweep point, best values in bold."""

from __future__ import annotations

import math

import pandas as pd

from editsweep.reports.aggregate import metric_info, summary_metrics, uses_toy_weights


def format_ci(mean: float, low: float, high: float) -> str:
    """Format as "mean ± half-CI", rounded to the CI's second significant digit ("0.273 ± 0.012")."""
    if not math.isfinite(mean):
        return "–"
    half = (high - low) / 2 if math.isfinite(low) and math.isfinite(high) else float("nan")
    if not math.isfinite(half) or half <= 0:
        return f"{mean:.4g} ± 0" if half == 0 else f"{mean:.4g}"
    decimals = min(max(0, 1 - math.floor(math.log10(half))), 8)
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def leaderboard_markdown(
    summary: pd.DataFrame, metrics: list[str] | None = None, sort_by: str | None = "clip_t"
) -> str:
    """Markdown leaderboard of a summary from `aggregate`, one section per dataset.

    Rows are sweep points sorted by `sort_by` (best first, in that metric's direction; None keeps
    the summary's order); cells are "mean ± half-CI". `metrics` defaults to all of the summary's.
    A warning heads the page when any row used random weights and another when rows used toy weights; a cell says how many images it
    averaged when some were non-finite or missing; points with errors are listed at the end.
    """
    available = summary_metrics(summary)
    metrics = available if metrics is None else metrics
    unknown = [m for m in [*metrics, *([sort_by] if sort_by else [])] if m not in available]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in the summary (it has {available})")

    lines = ["# Leaderboard", ""]
    if summary["random_weights"].any():
        weights = "; ".join(sorted(set(summary.loc[summary["random_weights"], "weights"]) - {""}))
        lines += [
            f"> **Warning: some rows used random weights ({weights or 'unspecified'}).** "
            "Their scores are not comparable to published numbers.",
            "",
        ]
    if uses_toy_weights(summary["weights"]):
        lines += [
            "> **Toy weights: these rows used models trained on the toy world (`toy/`).** Their scores "
            "measure the methods on that world only and are not comparable to published numbers.",
            "",
        ]
    ci = summary.attrs.get("ci")
    lines += [
        f"Cells: mean ± half-width of the {f'{ci:.0%} ' if ci else ''}percentile-bootstrap CI over images; "
        "n: images; best per dataset in bold. Non-finite scores (e.g. PSNR of an identical image) "
        "are left out of means and counted in the cell.",
        "",
    ]

    show_backbone = summary["backbone"].nunique() > 1
    for dataset, table in summary.groupby("dataset", sort=False):
        if sort_by:
            ascending = metric_info(sort_by).higher_is_better is False
            table = table.sort_values(f"{sort_by}_mean", ascending=ascending, na_position="last", kind="stable")
        header = [
            "method",
            *(["backbone"] if show_backbone else []),
            "point",
            "n",
            *(_header(m, m == sort_by) for m in metrics),
            "edit s",
            "errors",
        ]
        lines += [f"## {dataset}", "", _row(header), _row(["---"] * len(header))]
        best = {m: _best(table, m) for m in metrics}
        for _, point in table.iterrows():
            cells = [point["method"], *([point["backbone"]] if show_backbone else []), point["label"], str(point["n"])]
            cells += [_cell(point, m, best[m]) for m in metrics]
            cells += [f"{point['time_edit_s']:.3g}" if pd.notna(point["time_edit_s"]) else "–", str(point["n_error"])]
            lines.append(_row(cells))
        lines.append("")

    failed = summary[summary["n_error"] > 0]
    if len(failed):
        lines += ["## Errors", ""]
        for _, point in failed.iterrows():
            lines.append(
                f"- {point['dataset']} / {point['method']} / {point['label']}: {point['n_error']} failed tasks"
                f" ({point['n']} ok); most common: `{point['top_error'][:200]}`"
            )
        lines.append("")
    return "\n".join(lines)


def _header(metric: str, sorted_by: bool) -> str:
    info = metric_info(metric)
    arrow = {True: " ↑", False: " ↓", None: ""}[info.higher_is_better]
    return f"{info.display}{arrow}{' (sorted)' if sorted_by else ''}"


def _best(table: pd.DataFrame, metric: str) -> float:
    """The best mean of `metric` in `table` (NaN when its direction is unknown or no value)."""
    means = table[f"{metric}_mean"]
    higher = metric_info(metric).higher_is_better
    if higher is None or not means.notna().any():
        return float("nan")
    return means.max() if higher else means.min()


def _cell(point: pd.Series, metric: str, best: float) -> str:
    text = format_ci(point[f"{metric}_mean"], point[f"{metric}_ci_low"], point[f"{metric}_ci_high"])
    if point[f"{metric}_mean"] == best:
        text = f"**{text}**"
    used, n_inf = point[f"{metric}_n"], point[f"{metric}_n_inf"]
    if used != point["n"] and point["n"]:
        text += f" (n={used}" + (f"; {n_inf} inf left out)" if n_inf else ")")
    return text


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
