"""The static leaderboard site of one or several runs (issue 14, item 3).

`write_site` writes a folder that opens from disk, an object store or GitHub Pages: every link is
relative, there is no server and no network (plotly's JS is written into the folder once, not
taken from a CDN). Pages:

- `index.html`: the leaderboard (one row per sweep point and edit-type slice; sortable by any
  column, filterable by run, dataset, edit type and method), the trade-off plots (plotly; hovering
  a point shows its parameters), the matched-fidelity values, the list of samples, and the
  provenance of each run (spec, versions, weights, random/toy flags, MLflow link);
- `comparison.html`: the matched-fidelity comparison (`reports/matched.py`): curves with CI bands
  and the table of paired differences;
- `samples/<id>.html`: one gallery page per sample: the input, every method's edit at a few of
  its sweep points (spread over its sweep), and the scores of each image;
- `images/`: the gallery's images as small PNGs; `plotly.min.js`, `site.js`, `site.css`.

Data behind the tables is also written as JSON (`data/leaderboard.json`, `data/matched.json`) so
a person or a test can check the page against the numbers. Charts are plotly figures; the
tables' sort and filter are a short script of ours (`SITE_JS`): a table library (DataTables,
itables) would add jQuery and a larger bundle for two operations that take a few lines.
"""

from __future__ import annotations

import html
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from editsweep.bench.store import RunStore
from editsweep.reports.aggregate import (
    POINT_KEYS,
    aggregate,
    metric_info,
    pareto_front,
    summary_metrics,
    uses_toy_weights,
)
from editsweep.reports.leaderboard import format_ci
from editsweep.reports.matched import MatchedResult
from editsweep.reports.plots import axis_label, weights_note, zoomed_view

ALL_EDIT_TYPES = "all"
# The trade-off plots: editability against fidelity, and where there is ground truth (shapes),
# attribute accuracy against PSNR outside the edit mask (as reports/report.py's tradeoff.png).
DEFAULT_PAIRS = (("lpips", "clip_t"), ("outside_psnr", "attr_acc"))
THUMBNAIL_PX = 256  # longest side of a gallery image in the site


class SiteError(ValueError):
    """The site cannot be written: the message says what is wrong and how to fix it."""


@dataclass
class SiteRun:
    """One run as the site shows it: its rows, summary, matched comparison and provenance.

    `name` tags the run's rows in a site across runs; `mlflow_url` is the MLflow run's page when
    the tracking URI is an http(s) server (None otherwise: a SQLite file has no page to link).
    """

    name: str
    store: RunStore
    results: pd.DataFrame
    summary: pd.DataFrame
    spec: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    matched: MatchedResult | None = None
    mlflow_url: str | None = None
    notes: list[str] = field(default_factory=list)


def write_site(
    runs: Sequence[SiteRun],
    out: str | Path,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    max_samples: int = 200,
    points_per_method: int = 4,
    n_boot: int = 200,
) -> Path:
    """Write the site of `runs` into `out` (created; an earlier site's pages, images and data there are replaced).

    `pairs` are the trade-off plots' (x, y) metrics (a pair without scores in a dataset is skipped). The
    gallery has the first `max_samples` samples of each run (by dataset and id) and, per method,
    at most `points_per_method` sweep points spread evenly over its sweep. Edit-type rows of the
    leaderboard are aggregated with `n_boot` bootstrap resamples (the "all" rows are the report's
    summary). Returns the path of index.html. Raises SiteError for no runs or repeated run names.
    """
    if not runs:
        raise SiteError("no runs to put in the site: pass at least one run")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SiteError(f"run names {names} repeat: give each run of the site its own name")
    if max_samples < 0 or points_per_method < 1:
        raise SiteError(f"max_samples must be >= 0 and points_per_method >= 1 (got {max_samples}, {points_per_method})")
    out = Path(out)
    for folder, pattern in (("samples", "*.html"), ("images", "*.png"), ("data", "*.json")):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for stale in (out / folder).glob(pattern):  # an earlier site's pages and images, e.g. of other samples
            stale.unlink()
    (out / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
    (out / "site.js").write_text(SITE_JS, encoding="utf-8")
    (out / "site.css").write_text(SITE_CSS, encoding="utf-8")

    several = len(runs) > 1
    board = leaderboard_frame(runs, n_boot=n_boot)
    metrics = list(dict.fromkeys(m for r in runs for m in summary_metrics(r.summary)))
    (out / "data" / "leaderboard.json").write_text(_records_json(board), encoding="utf-8")
    matched = _matched_frames(runs)
    (out / "data" / "matched.json").write_text(
        json.dumps({k: json.loads(_records_json(v)) for k, v in matched.items()}, indent=1), encoding="utf-8"
    )
    samples = _write_samples(runs, out, max_samples, points_per_method, several)
    title = "editsweep: " + ", ".join(names)
    body = [
        _header(runs, title),
        _nav(),
        _leaderboard_section(board, metrics, several),
        _tradeoff_section(runs, pairs, several),
        _matched_section(matched, several),
        _samples_section(samples, several),
        _provenance_section(runs),
    ]
    (out / "index.html").write_text(_page(title, "".join(body), plotly=True), encoding="utf-8")
    comparison = [
        _header(runs, f"Matched-fidelity comparison: {', '.join(names)}"),
        _nav(),
        _comparison_body(runs, matched, several),
    ]
    (out / "comparison.html").write_text(
        _page("Matched-fidelity comparison", "".join(comparison), plotly=True), encoding="utf-8"
    )
    return out / "index.html"


# ---------------------------------------------------------------- data


def unique_run_names(names: Sequence[str]) -> list[str]:
    """`names` with repeats made unique by a suffix ("run", "run" -> "run", "run-2"), order kept."""
    out: list[str] = []
    for name in names:
        candidate, i = name, 1
        while candidate in out:
            i += 1
            candidate = f"{name}-{i}"
        out.append(candidate)
    return out


def leaderboard_frame(runs: Sequence[SiteRun], n_boot: int = 200) -> pd.DataFrame:
    """The leaderboard's rows: each run's summary (edit type "all") and, for runs whose rows carry
    `labels['edit_type']`, the same points aggregated over each edit type's images.

    Columns: run, edit_type, then the summary's (POINT_KEYS, label, n, ..., `<m>_mean`, ...).
    """
    frames = []
    for run in runs:
        frames.append(run.summary.assign(run=run.name, edit_type=ALL_EDIT_TYPES))
        types = _edit_types(run.results)
        metrics = summary_metrics(run.summary)
        for edit_type in sorted(types.dropna().unique(), key=_natural):
            subset = run.results[types.eq(edit_type).to_numpy()]
            per_type = aggregate(subset, metrics=[m for m in metrics if _has_score(subset, m)], n_boot=n_boot)
            frames.append(per_type.assign(run=run.name, edit_type=str(edit_type)))
    board = pd.concat(frames, ignore_index=True)
    front = ["run", "dataset", "edit_type", "method", "backbone", "label"]
    return board[[*front, *(c for c in board.columns if c not in front)]]


def _edit_types(results: pd.DataFrame) -> pd.Series:
    """Each row's edit type (a name when the dataset gives one, else its id), or None."""
    if "labels" not in results:
        return pd.Series([None] * len(results), index=results.index, dtype="object")
    labels = [lab or {} for lab in results["labels"]]
    return pd.Series(
        [lab.get("edit_type_name") or lab.get("edit_type") for lab in labels], index=results.index, dtype="object"
    )


def _has_score(results: pd.DataFrame, metric: str) -> bool:
    return any(metric in (s or {}) for s in results["scores"])


def _natural(text: Any) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text)))


def _records_json(frame: pd.DataFrame) -> str:
    """`frame` as a JSON list of records; NaN and +-inf become null (JSON has neither)."""
    clean = frame.replace([np.inf, -np.inf], np.nan).astype(object).where(frame.notna(), None)
    return json.dumps(clean.to_dict(orient="records"), indent=1, default=str)


def _matched_frames(runs: Sequence[SiteRun]) -> dict[str, pd.DataFrame]:
    """The matched comparison's values, pairs, curves and bands of every run, tagged with the run."""
    parts: dict[str, list[pd.DataFrame]] = {"values": [], "pairs": [], "curves": [], "bands": []}
    for run in runs:
        if run.matched is not None:
            for name, frames in parts.items():
                frames.append(getattr(run.matched, name).assign(run=run.name))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in parts.items()}


# ---------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    """Text for HTML (attributes too)."""
    return html.escape(str(value), quote=True)


def _h(value: Any) -> str:
    """Text for a plotly label: plotly reads <, > and & as entities but shows &quot; literally."""
    return html.escape(str(value), quote=False)


def _page(title: str, body: str, plotly: bool = False, depth: int = 0) -> str:
    up = "../" * depth
    scripts = f'<script src="{up}plotly.min.js"></script>' if plotly else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f'<link rel="stylesheet" href="{up}site.css">{scripts}</head>\n<body>{body}'
        f'<script src="{up}site.js"></script></body></html>\n'
    )


def _header(runs: Sequence[SiteRun], title: str) -> str:
    rows = pd.concat([r.summary[["random_weights", "weights"]] for r in runs], ignore_index=True)
    warnings = []
    if rows["random_weights"].eq(True).any():
        warnings.append("Some rows used RANDOM weights: their scores are not comparable to published numbers.")
    if uses_toy_weights(rows["weights"]):
        warnings.append(
            "Rows used TOY weights (models trained on the toy world, toy/): not comparable to published numbers."
        )
    links = " ".join(
        f'<a class="mlflow" href="{_e(r.mlflow_url)}">MLflow run{f" ({_e(r.name)})" if len(runs) > 1 else ""}</a>'
        for r in runs
        if r.mlflow_url
    )
    parts = [f"<header><h1>{_e(title)}</h1>"]
    parts += [f'<p class="warning">{_e(w)}</p>' for w in warnings]
    if links:
        parts.append(f"<p>{links}</p>")
    return "".join(parts) + "</header>"


def _nav(depth: int = 0) -> str:
    up = "../" * depth
    items = [
        (f"{up}index.html#leaderboard", "Leaderboard"),
        (f"{up}index.html#tradeoff", "Trade-off"),
        (f"{up}comparison.html", "Matched fidelity"),
        (f"{up}index.html#samples", "Gallery"),
        (f"{up}index.html#provenance", "Provenance"),
    ]
    return "<nav>" + " | ".join(f'<a href="{href}">{_e(text)}</a>' for href, text in items) + "</nav>"


def _metric_header(metric: str) -> str:
    info = metric_info(metric)
    return info.display + {True: " ↑", False: " ↓", None: ""}[info.higher_is_better]


def _num(value: Any) -> str:
    """A cell's sort key: the number, or "" for a missing one (sorted last)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(number) if math.isfinite(number) else ""


def _filters(frame: pd.DataFrame, keys: Sequence[tuple[str, str]], target: str, defaults: dict[str, str]) -> str:
    """<select>s filtering the rows of table `target` by the attribute of each (column, label)."""
    out = [f'<div class="filters" data-table="{target}">']
    for column, label in keys:
        values = sorted({str(v) for v in frame[column].dropna()}, key=_natural)
        default = defaults.get(column)
        options = [] if default else ['<option value="">any</option>']
        options += [f'<option value="{_e(v)}"{" selected" if v == default else ""}>{_e(v)}</option>' for v in values]
        slug = column.replace("_", "-")
        out.append(
            f'<label>{_e(label)} <select id="{target}-filter-{slug}" data-filter="{slug}">{"".join(options)}</select></label>'
        )
    out.append(f'<span class="count" id="{target}-count"></span></div>')
    return "".join(out)


def _leaderboard_section(board: pd.DataFrame, metrics: list[str], several: bool) -> str:
    show_backbone = board["backbone"].nunique() > 1
    keys = [
        *([("run", "Run")] if several else []),
        ("dataset", "Dataset"),
        ("edit_type", "Edit type"),
        ("method", "Method"),
    ]
    columns = [
        *(["run"] if several else []),
        "dataset",
        "edit_type",
        "method",
        *(["backbone"] if show_backbone else []),
        "label",
        "n",
    ]
    names = {
        "run": "run",
        "dataset": "dataset",
        "edit_type": "edit type",
        "method": "method",
        "backbone": "backbone",
        "label": "point",
        "n": "n",
    }
    head = [f'<th data-type="{"num" if c == "n" else "text"}">{_e(names[c])}</th>' for c in columns]
    head += [f'<th data-type="num" data-metric="{_e(m)}">{_e(_metric_header(m))}</th>' for m in metrics]
    head += ['<th data-type="num">edit s</th>', '<th data-type="num">errors</th>']
    best = _best_cells(board, metrics)
    rows = []
    for idx, point in board.iterrows():
        attrs = "".join(
            f' data-{c.replace("_", "-")}="{_e(point[c])}"' for c in ("run", "dataset", "edit_type", "method")
        )
        cells = [f'<td data-sort="{_e(point["n"]) if c == "n" else _e(point[c])}">{_e(point[c])}</td>' for c in columns]
        cells[columns.index("label")] = (
            f'<td data-sort="{_e(point["label"])}" title="{_e(_params_text(point))}">{_e(point["label"])}</td>'
        )
        for m in metrics:
            mean = point.get(f"{m}_mean", np.nan)
            text = (
                format_ci(mean, point.get(f"{m}_ci_low", np.nan), point.get(f"{m}_ci_high", np.nan))
                if pd.notna(mean)
                else "–"
            )
            cls = ' class="best"' if (idx, m) in best else ""
            cells.append(f'<td{cls} data-sort="{_num(mean)}">{_e(text)}</td>')
        edit_s = point["time_edit_s"]
        cells.append(f'<td data-sort="{_num(edit_s)}">{f"{edit_s:.3g}" if pd.notna(edit_s) else "–"}</td>')
        cells.append(f'<td data-sort="{_num(point["n_error"])}">{_e(point["n_error"])}</td>')
        rows.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    filters = _filters(board, keys, "leaderboard", {"edit_type": ALL_EDIT_TYPES})
    return (
        '<section id="leaderboard"><h2>Leaderboard</h2>'
        "<p>One row per sweep point; cells: mean ± half-width of the bootstrap CI over images; best per dataset "
        'and edit type (over all runs) in bold. Click a column header to sort (again to reverse). Edit type "all": every image '
        "of the point. Hover a point for its parameters.</p>"
        f'{filters}<table id="leaderboard-table" class="sortable filterable"><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _best_cells(board: pd.DataFrame, metrics: list[str]) -> set[tuple[int, str]]:
    """(row index, metric) of the best mean per (dataset, edit type) over all runs, by the metric's direction."""
    best = set()
    for _, group in board.groupby(["dataset", "edit_type"], sort=False):
        for m in metrics:
            higher = metric_info(m).higher_is_better
            means = group.get(f"{m}_mean")
            if higher is None or means is None or not means.notna().any():
                continue
            target = means.max() if higher else means.min()
            best.update((i, m) for i in group.index[means == target])
    return best


def _params_text(point: pd.Series) -> str:
    """A point's parameters, one line per section ("invert: {...}"), for hover text."""
    lines = [f"{point['method']} ({point['backbone'] or 'default backbone'}, {point['dtype']})"]
    for section in ("invert", "edit"):
        raw = point.get(f"{section}_params")
        if isinstance(raw, str) and raw not in ("", "{}"):
            lines.append(f"{section}: {raw}")
    return "\n".join(lines)


def _figure_html(fig: go.Figure, div_id: str, height: int = 520) -> str:
    fig.update_layout(height=height, margin={"l": 70, "r": 20, "t": 110, "b": 60}, font={"size": 13})
    return f'<div class="figure">{fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_height=f"{height}px", config={"displaylogo": False})}</div>'


def method_colours(runs: Sequence[SiteRun]) -> dict[tuple[str, str], str]:
    """A colour per (run, method), in order of appearance: the same in every plot of the site."""
    keys = dict.fromkeys((r.name, m) for r in runs for m in r.summary["method"])
    return {key: _COLOURS[i % len(_COLOURS)] for i, key in enumerate(keys)}


def curve_name(run: str, method: str, backbone: str, several: bool) -> str:
    """A trade-off curve's legend name: "[run / ]method[ / backbone]"."""
    return " / ".join(str(k) for k in ((run,) if several else ()) + (method, backbone) if k)


def tradeoff_figure(
    runs: Sequence[SiteRun],
    x: str,
    y: str,
    dataset: str,
    several: bool,
    colours: dict[tuple[str, str], str] | None = None,
) -> go.Figure | None:
    """Plotly figure of y against x in `dataset`: a curve per (run, method, backbone) with CI error
    bars, the points' labels, hover text with the parameters, and the Pareto front. `colours` maps
    (run, method) to a colour (`method_colours`), so a method keeps its colour across figures. An axis is
    zoomed on most points when a far outlier would squeeze them (`plots.zoomed_view`). None when no
    point has both scores."""
    fig = go.Figure()
    frames = []
    for run in runs:
        summary = run.summary
        if f"{x}_mean" not in summary or f"{y}_mean" not in summary:
            continue
        points = summary[summary["dataset"].eq(dataset)]
        points = points[np.isfinite(points[f"{x}_mean"].astype(float)) & np.isfinite(points[f"{y}_mean"].astype(float))]
        frames.append(points)
        for key, curve in points.groupby(["method", "backbone"], sort=False):
            curve = curve.sort_values(f"{x}_mean")
            name = curve_name(run.name, *key, several)
            colour = (colours or {}).get((run.name, key[0]))
            hover = [
                f"<b>{_h(name)}</b> {_h(p['label'])}<br>{_h(_params_text(p)).replace(chr(10), '<br>')}<br>"
                f"{_h(metric_info(x).display)}: {_h(format_ci(p[f'{x}_mean'], p[f'{x}_ci_low'], p[f'{x}_ci_high']))}<br>"
                f"{_h(metric_info(y).display)}: {_h(format_ci(p[f'{y}_mean'], p[f'{y}_ci_low'], p[f'{y}_ci_high']))}<br>n={p['n']}"
                for _, p in curve.iterrows()
            ]
            fig.add_trace(
                go.Scatter(
                    x=curve[f"{x}_mean"],
                    y=curve[f"{y}_mean"],
                    mode="lines+markers+text",
                    name=name,
                    text=curve["label"],
                    textposition="top center",
                    textfont={"size": 11, "color": colour},
                    hovertext=hover,
                    hoverinfo="text",
                    error_x=_error_bars(curve, x),
                    error_y=_error_bars(curve, y),
                    line={"color": colour},
                    marker={"color": colour},
                )
            )
    if not frames or all(f.empty for f in frames):
        return None
    points = pd.concat(frames, ignore_index=True)
    front = pareto_front(
        points,
        f"{x}_mean",
        f"{y}_mean",
        x_lower_better=metric_info(x).higher_is_better is False,
        y_higher_better=metric_info(y).higher_is_better is not False,
    )
    fig.add_trace(
        go.Scatter(
            x=front[f"{x}_mean"],
            y=front[f"{y}_mean"],
            mode="lines",
            name="Pareto front (all points)",
            line={"color": "rgba(128,128,128,0.35)", "width": 10},
            hoverinfo="skip",
        )
    )
    note = weights_note(points)
    title = f"{dataset}: {metric_info(y).display} vs {metric_info(x).display} (error bars: bootstrap CI)"
    views = {"xaxis": zoomed_view(points, x), "yaxis": zoomed_view(points, y)}
    for axis, view in views.items():
        if view is not None:  # a far outlier (e.g. `copy` at LPIPS 0) would squeeze the other curves
            fig.update_layout({axis: {"range": list(view)}})
    zoom = any(v is not None for v in views.values())
    fig.update_layout(
        title={
            "text": (f"{_h(note)}<br>" if note else "")
            + _h(title)
            + ("<br>zoomed on most points: double-click the plot to see all" if zoom else ""),
            "font": {"color": "darkred" if note else "black"},
        },
        xaxis_title=axis_label(x),
        yaxis_title=axis_label(y),
        legend={"orientation": "h", "y": -0.2},
        hoverlabel={"align": "left"},
    )
    return fig


def _error_bars(curve: pd.DataFrame, metric: str) -> dict[str, Any]:
    mean = curve[f"{metric}_mean"].to_numpy(dtype=float)
    upper = np.nan_to_num(curve[f"{metric}_ci_high"].to_numpy(dtype=float) - mean).clip(min=0)
    lower = np.nan_to_num(mean - curve[f"{metric}_ci_low"].to_numpy(dtype=float)).clip(min=0)
    return {"type": "data", "symmetric": False, "array": upper.tolist(), "arrayminus": lower.tolist(), "thickness": 1}


def _tradeoff_section(runs: Sequence[SiteRun], pairs: Sequence[tuple[str, str]], several: bool) -> str:
    datasets = list(dict.fromkeys(d for r in runs for d in r.summary["dataset"]))
    colours = method_colours(runs)
    figures = []
    for i, (x, y) in enumerate(pairs):
        for j, dataset in enumerate(datasets):
            fig = tradeoff_figure(runs, x, y, dataset, several, colours)
            if fig is not None:
                figures.append(_figure_html(fig, f"tradeoff-{i}-{j}"))
    text = "".join(figures) or "<p>No trade-off plot: no point has scores for both metrics of a pair.</p>"
    return (
        '<section id="tradeoff"><h2>Trade-off</h2><p>Each curve is one method\'s sweep; hover a point for its '
        "parameters and scores; click a legend entry to hide its curve. The grey band is the Pareto front.</p>"
        f"{text}</section>"
    )


def _matched_value_table(values: pd.DataFrame, several: bool, table_id: str) -> str:
    """Each curve's value read at each fidelity level, one row per (run, dataset, metric, level, curve)."""
    columns = [*(["run"] if several else []), "dataset", "metric", "level", "curve", "value"]
    head = "".join(f'<th data-type="{"num" if c in ("level", "value") else "text"}">{_e(c)}</th>' for c in columns)
    rows = []
    for _, r in values.iterrows():
        value = (
            "not reached"
            if not np.isfinite(r["value"])
            else (format_ci(r["value"], r["ci_low"], r["ci_high"]) if np.isfinite(r["ci_low"]) else f"{r['value']:.4g}")
        )
        cells = [
            *([r["run"]] if several else []),
            r["dataset"],
            metric_info(r["metric"]).display,
            f"{r['level']:g}",
            r["curve"],
        ]
        sort = [*([r["run"]] if several else []), r["dataset"], r["metric"], _num(r["level"]), r["curve"]]
        tds = "".join(f'<td data-sort="{_e(s)}">{_e(c)}</td>' for s, c in zip(sort, cells))
        attrs = f' data-dataset="{_e(r["dataset"])}" data-run="{_e(r["run"])}"'
        rows.append(f'<tr{attrs}>{tds}<td data-sort="{_num(r["value"])}">{_e(value)}</td></tr>')
    return (
        f'<table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _matched_section(matched: dict[str, pd.DataFrame], several: bool) -> str:
    values = matched["values"]
    if values.empty:
        return '<section id="matched"><h2>Matched fidelity</h2><p>No matched-fidelity comparison in this report (see the notes in provenance).</p></section>'
    return (
        '<section id="matched"><h2>Matched fidelity</h2><p>Each method\'s editability read off its curve at fixed '
        "fidelity levels (linear interpolation, no extrapolation). Differences between methods with paired CIs and "
        'p-values: <a href="comparison.html">the comparison page</a>.</p>'
        f"{_matched_value_table(values, several, 'matched-values')}</section>"
    )


def _comparison_body(runs: Sequence[SiteRun], matched: dict[str, pd.DataFrame], several: bool) -> str:
    pairs = matched["pairs"]
    if pairs.empty and matched["values"].empty:
        return '<section id="comparison"><p>No matched-fidelity comparison in this report.</p></section>'
    figures = []
    colours = method_colours(runs)
    for i, ((run, dataset, metric), curves) in enumerate(
        matched["curves"].groupby(["run", "dataset", "metric"], sort=False)
    ):
        result = next(r.matched for r in runs if r.name == run)
        fig = go.Figure()
        bands = matched["bands"]
        bands = (
            bands[(bands["run"] == run) & (bands["dataset"] == dataset) & (bands["metric"] == metric)]
            if len(bands)
            else bands
        )
        for j, (name, curve) in enumerate(curves.groupby("curve", sort=False)):
            # matched.py names a curve by its method, "method (backbone, dtype)" when it has several
            colour = colours.get((run, name.split(" (")[0]), _COLOURS[j % len(_COLOURS)])
            band = bands[bands["curve"] == name] if len(bands) else bands
            if len(band):
                fig.add_trace(
                    go.Scatter(
                        x=band["x"], y=band["high"], mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"
                    )
                )
                fig.add_trace(
                    go.Scatter(
                        x=band["x"],
                        y=band["low"],
                        mode="lines",
                        line={"width": 0},
                        fill="tonexty",
                        fillcolor=_rgba(colour, 0.2),
                        showlegend=False,
                        hoverinfo="skip",
                    )
                )
            curve = curve.sort_values(["x", "y"])
            fig.add_trace(
                go.Scatter(
                    x=curve["x"],
                    y=curve["y"],
                    mode="lines+markers",
                    name=name,
                    line={"color": colour},
                    hovertemplate=f"{_h(name)}<br>x=%{{x:.4g}}<br>y=%{{y:.4g}}<extra></extra>",
                )
            )
        for level in result.levels.get(dataset, []):
            fig.add_vline(x=level, line={"dash": "dot", "color": "grey"})
        title = f"{f'{run}: ' if several else ''}{dataset}: {metric_info(metric).display} at matched {metric_info(result.options.fidelity).display}"
        fig.update_layout(
            title=_h(title + f" (bands: {result.options.ci:.0%} bootstrap CI; dotted: levels)"),
            xaxis_title=axis_label(result.options.fidelity),
            yaxis_title=axis_label(metric),
        )
        figures.append(_figure_html(fig, f"matched-{i}", height=460))
    columns = [
        *(["run"] if several else []),
        "dataset",
        "metric",
        "level",
        "a",
        "b",
        "diff",
        "ci",
        "p_holm",
        "value_a",
        "value_b",
    ]
    heads = {
        "diff": "A − B",
        "ci": "CI",
        "p_holm": "Holm p",
        "value_a": "A value",
        "value_b": "B value",
        "a": "A",
        "b": "B",
    }
    numeric = {"level", "diff", "p_holm", "value_a", "value_b"}
    head = "".join(f'<th data-type="{"num" if c in numeric else "text"}">{_e(heads.get(c, c))}</th>' for c in columns)
    rows = []
    for _, r in pairs.iterrows():
        finite = np.isfinite(r["diff"])
        shown = {
            "run": r["run"],
            "dataset": r["dataset"],
            "metric": metric_info(r["metric"]).display,
            "level": f"{r['level']:g}",
            "a": r["a"],
            "b": r["b"],
            "diff": f"{r['diff']:+.4g}" if finite else "not reached",
            "ci": f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]" if np.isfinite(r["ci_low"]) else "–",
            "p_holm": "–" if not np.isfinite(r["p_holm"]) else f"{r['p_holm']:.2g}",
            "value_a": f"{r['value_a']:.4g}" if np.isfinite(r["value_a"]) else "not reached",
            "value_b": f"{r['value_b']:.4g}" if np.isfinite(r["value_b"]) else "not reached",
        }
        sort = {c: (_num(r[c]) if c in numeric else shown[c]) for c in columns}
        tds = "".join(f'<td data-sort="{_e(sort[c])}">{_e(shown[c])}</td>' for c in columns)
        rows.append(f'<tr data-dataset="{_e(r["dataset"])}" data-run="{_e(r["run"])}">{tds}</tr>')
    options = next(r.matched.options for r in runs if r.matched is not None)
    return (
        '<section id="comparison"><h2>Matched-fidelity comparison</h2>'
        f"<p>A − B &gt; 0: A is better by the metric's direction. CI: {options.ci:.0%} paired percentile bootstrap "
        f"over samples ({options.n_boot} resamples); p: two-sided bootstrap p, Holm-adjusted over the pairs of each "
        "level. Method (reports/matched.py).</p>"
        f'{"".join(figures)}<table id="comparison-table" class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


_COLOURS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# ---------------------------------------------------------------- gallery


@dataclass
class _Sample:
    """One gallery page: which sample, what the samples table shows of it, and where its page is."""

    run: str
    dataset: str
    sample_id: str
    edit_type: str
    prompt: str
    page: str  # relative to the site root
    thumbnail: str | None  # the input's copy, relative to the site root


def _slug(*parts: str) -> str:
    """A file name from `parts`: readable characters kept, a hash of all of them for uniqueness."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)).strip("._")[:80]
    return f"{text}-{zlib.crc32('/'.join(parts).encode()):08x}"


def _copy_image(store: RunStore, rel: Any, out: Path) -> str | None:
    """A small PNG copy of the stored image `rel` in out/images; its path relative to the site, or None."""
    if not isinstance(rel, str) or not rel:
        return None
    name = f"images/{_slug(store.root, rel)}.png"
    target = out / name
    if not target.exists():
        try:
            image = store.read_image(rel)
        except OSError:
            return None
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        image.save(target, format="PNG", optimize=True)
    return name


def _chosen_points(summary: pd.DataFrame, dataset: str, per_method: int) -> pd.DataFrame:
    """Per (method, backbone) in `dataset`: at most `per_method` points spread evenly over its sweep."""
    chosen = []
    for _, points in summary[summary["dataset"].eq(dataset)].groupby(["method", "backbone"], sort=False):
        if len(points) > per_method:
            points = points.iloc[np.linspace(0, len(points) - 1, per_method).round().astype(int)]
        chosen.append(points)
    return pd.concat(chosen) if chosen else summary.iloc[:0]


def _write_samples(
    runs: Sequence[SiteRun], out: Path, max_samples: int, per_method: int, several: bool
) -> list[_Sample]:
    samples = []
    for run in runs:
        results = run.results.assign(backbone=run.results["backbone"].fillna(""), edit_type=_edit_types(run.results))
        ok = results[results["status"].eq("ok")]
        by_sample = ok.groupby(["dataset", "sample_id"], sort=False)
        keys = sorted(by_sample.groups, key=lambda k: (_natural(k[0]), _natural(k[1])))
        for dataset, sample_id in keys[:max_samples]:
            rows = by_sample.get_group((dataset, sample_id))
            first = rows.sort_values("seed").iloc[0]
            page = f"samples/{_slug(*([run.name] if several else []), str(dataset), str(sample_id))}.html"
            inputs = rows["input_path"].dropna() if "input_path" in rows else pd.Series(dtype=str)
            thumb = _copy_image(run.store, inputs.iloc[0], out) if len(inputs) else None
            sample = _Sample(
                run.name,
                str(dataset),
                str(sample_id),
                str(first["edit_type"] or ""),
                str(first["target_prompt"]),
                page,
                thumb,
            )
            cells = []
            for _, point in _chosen_points(run.summary, dataset, per_method).iterrows():
                match = rows[np.logical_and.reduce([rows[k].eq(point[k]).to_numpy() for k in POINT_KEYS])]
                image_row = match.sort_values("seed").iloc[0] if len(match) else None
                cells.append(
                    (
                        point,
                        image_row,
                        _copy_image(run.store, image_row["image_path"], out) if image_row is not None else None,
                    )
                )
            (out / page).write_text(_sample_page(runs, run, sample, first, cells, several), encoding="utf-8")
            samples.append(sample)
    return samples


def _sample_page(
    runs: Sequence[SiteRun], run: SiteRun, sample: _Sample, first: pd.Series, cells: list, several: bool
) -> str:
    metrics = summary_metrics(run.summary)
    rows: dict[str, list[str]] = {}  # one gallery row per method (and backbone)
    for point, row, image in cells:
        caption = f"{point['method']} {point['label']}"
        if image is None:
            body = '<div class="missing">no image (the task failed or was not run)</div>'
        else:
            body = f'<img src="../{_e(image)}" alt="{_e(caption)}">'
        scores = (row["scores"] or {}) if row is not None else {}
        table = "".join(
            f'<tr><th>{_e(metric_info(m).display)}</th><td class="score" data-metric="{_e(m)}">{_e(_score(scores.get(m)))}</td></tr>'
            for m in metrics
            if m in scores
        )
        seed = f" (seed {row['seed']})" if row is not None else ""
        curve = " / ".join(k for k in (point["method"], point["backbone"]) if k)
        rows.setdefault(curve, []).append(
            f'<figure class="edit" data-method="{_e(point["method"])}" title="{_e(_params_text(point))}">{body}'
            f'<figcaption>{_e(caption)}{_e(seed)}</figcaption><table class="scores">{table}</table></figure>'
        )
    info = [
        ("run", run.name) if several else None,
        ("dataset", sample.dataset),
        ("sample", sample.sample_id),
        ("edit type", sample.edit_type) if sample.edit_type else None,
        ("source prompt", first["source_prompt"]),
        ("target prompt", first["target_prompt"]),
    ]
    facts = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in filter(None, info))
    source = (
        f'<figure class="input"><img src="../{_e(sample.thumbnail)}" alt="input"><figcaption>input</figcaption></figure>'
        if sample.thumbnail
        else '<div class="missing">no input image stored</div>'
    )
    galleries = "".join(
        f'<h3>{_e(curve)}</h3><div class="gallery">{"".join(figures)}</div>' for curve, figures in rows.items()
    )
    title = f"{sample.dataset} / {sample.sample_id}"
    body = (
        _header(runs, f"Sample {title}")
        + _nav(depth=1)
        + f'<section id="sample"><div class="gallery">{source}<table class="facts">{facts}</table></div>'
        "<p>Each method's edit (lowest seed) at points spread over its sweep; hover an edit for its parameters.</p>"
        f"{galleries}</section>"
    )
    return _page(f"Sample {title}", body, depth=1)


def _score(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


def _samples_section(samples: list[_Sample], several: bool) -> str:
    if not samples:
        return '<section id="samples"><h2>Gallery</h2><p>No sample has an ok row: nothing to show.</p></section>'
    columns = [*(["run"] if several else []), "dataset", "sample", "edit type", "target prompt", "input"]
    head = "".join(f'<th data-type="text">{_e(c)}</th>' for c in columns)
    rows = []
    for s in samples:
        link = f'<a href="{_e(s.page)}">{_e(s.sample_id)}</a>'
        thumb = f'<img class="thumb" src="{_e(s.thumbnail)}" alt="input of {_e(s.sample_id)}">' if s.thumbnail else ""
        cells = [*([_e(s.run)] if several else []), _e(s.dataset), link, _e(s.edit_type), _e(s.prompt), thumb]
        sort = [*([s.run] if several else []), s.dataset, s.sample_id, s.edit_type, s.prompt, ""]
        tds = "".join(f'<td data-sort="{_e(k)}">{c}</td>' for k, c in zip(sort, cells))
        rows.append(
            f'<tr data-run="{_e(s.run)}" data-dataset="{_e(s.dataset)}" data-edit-type="{_e(s.edit_type)}">{tds}</tr>'
        )
    frame = pd.DataFrame(
        {
            "run": [s.run for s in samples],
            "dataset": [s.dataset for s in samples],
            "edit_type": [s.edit_type or None for s in samples],
        }
    )
    keys = [
        *([("run", "Run")] if several else []),
        ("dataset", "Dataset"),
        *([("edit_type", "Edit type")] if frame["edit_type"].notna().any() else []),
    ]
    return (
        '<section id="samples"><h2>Gallery</h2><p>One page per sample: the input and every method\'s edits with their scores.</p>'
        f'{_filters(frame, keys, "samples", {})}<table id="samples-table" class="sortable filterable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


# ---------------------------------------------------------------- provenance


def _provenance_section(runs: Sequence[SiteRun]) -> str:
    parts = ['<section id="provenance"><h2>Provenance</h2>']
    for run in runs:
        summary = run.summary
        weights = sorted({w for ws in summary["weights"].dropna() for w in str(ws).split("; ") if w})
        facts = [
            ("run", run.name),
            ("run dir", run.store.uri),
            ("store run ids", ", ".join(sorted(map(str, run.results["run_id"].dropna().unique())))),
            ("random weights", "yes" if summary["random_weights"].eq(True).any() else "no"),
            ("toy weights", "yes" if uses_toy_weights(summary["weights"]) else "no"),
            ("weights", "; ".join(weights) or "–"),
            ("tasks", f"{len(run.results)} ({int(run.results['status'].ne('ok').sum())} failed)"),
            *(
                (k, run.manifest.get(k))
                for k in ("started_at", "finished_at", "git_commit", "python", "platform", "host")
            ),
        ]
        table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v if v is not None else '–')}</td></tr>" for k, v in facts)
        if run.mlflow_url:
            table += f'<tr><th>MLflow</th><td><a class="mlflow" href="{_e(run.mlflow_url)}">{_e(run.mlflow_url)}</a></td></tr>'
        versions = run.manifest.get("versions") or {}
        version_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in sorted(versions.items()))
        notes = "".join(f"<li>{_e(n)}</li>" for n in run.notes)
        parts.append(
            f'<div class="run" data-run="{_e(run.name)}"><h3>{_e(run.name)}</h3><table class="facts">{table}</table>'
            + (f'<h4>Versions</h4><table class="facts versions">{version_rows}</table>' if version_rows else "")
            + (f"<h4>Notes</h4><ul>{notes}</ul>" if notes else "")
            + f'<details><summary>Sweep spec</summary><pre class="spec">{_e(json.dumps(run.spec, indent=2, default=str))}</pre></details></div>'
        )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p>Site written {generated} by editsweep (reports/site.py).</p></section>")
    return "".join(parts)


SITE_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } nav { margin: 0.5em 0 1em; }
.warning { color: darkred; font-weight: bold; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
table.sortable thead th { cursor: pointer; background: #f0f0f0; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.best { font-weight: bold; }
#leaderboard { overflow-x: auto; } #leaderboard-table td { white-space: nowrap; }
.filters label { margin-right: 1em; } .count { color: #666; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; width: 260px; } figure img { width: 256px; height: auto; image-rendering: pixelated; border: 1px solid #999; }
figcaption { font-size: 0.85em; margin: 2px 0; } .missing { width: 256px; height: 256px; background: #ddd; display: flex; align-items: center; justify-content: center; }
img.thumb { width: 48px; image-rendering: pixelated; } pre.spec { background: #f7f7f7; padding: 0.5em; overflow-x: auto; }
.figure { margin-bottom: 1em; }
"""

# Sort any table.sortable by a click on its header (by each cell's data-sort, numbers numerically,
# empty last) and show only the rows of a filterable table whose data-* attributes match every
# <select data-filter> of the .filters block naming it.
SITE_JS = """
(function () {
  function key(cell) { return cell ? (cell.getAttribute('data-sort') ?? cell.textContent) : ''; }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var numeric = th.getAttribute('data-type') === 'num';
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === '' || y === '') { return (x === '') - (y === ''); }
          var d = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y, undefined, {numeric: true});
          return asc ? d : -d;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll('.filters').forEach(function (box) {
    var table = document.getElementById(box.getAttribute('data-table') + '-table');
    var selects = box.querySelectorAll('select[data-filter]');
    var count = box.querySelector('.count');
    function apply() {
      var shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var keep = Array.prototype.every.call(selects, function (s) {
          return s.value === '' || row.getAttribute('data-' + s.getAttribute('data-filter')) === s.value;
        });
        row.hidden = !keep; shown += keep ? 1 : 0;
      });
      count.textContent = shown + ' of ' + table.tBodies[0].rows.length + ' rows';
    }
    selects.forEach(function (s) { s.addEventListener('change', apply); });
    apply();
  });
})();
"""
