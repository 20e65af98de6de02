"""Report sections for two protocols: PIE-Bench's per-edit-type tables and the reconstruction table.

- Per edit type (PIE-Bench, any run whose rows carry `labels['edit_type']`): one markdown table per
  metric, a row per edit type present (and one for all images), a column per sweep point, cells the
  mean over that type's images. Non-finite values (NaN: no unedited pixel; +inf: PSNR of an identical
  image) are left out of a mean, as in `aggregate`. Values are shown at each metric's display scale,
  declared by its scorer (PIE-Bench's: LPIPS x10^3, MSE x10^4, SSIM x10^2, structure distance
  x10^3), named in each heading; the stored scores stay raw.
- Reconstruction (any run in which every ok row's source prompt equals its target prompt, e.g. the
  COCO set of Prompt Tuning Inversion): PSNR, SSIM and LPIPS per sweep point, best PSNR first, with
  the `vae_roundtrip` row labelled as the upper bound that no latent inversion can pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from editsweep.reports.aggregate import POINT_KEYS, label_points, metric_info
from editsweep.reports.leaderboard import format_ci

# PIE-Bench's table order (METRICS.md).
PIE_BENCH_METRICS = [
    "structure_distance",
    "psnr_unedited",
    "lpips_unedited",
    "mse_unedited",
    "ssim_unedited",
    "clip_whole",
    "clip_edited",
]
RECONSTRUCTION_METRICS = ["psnr", "ssim", "lpips"]
UPPER_BOUND_METHOD = "vae_roundtrip"
ALL = "all"


def display_scale(metric: str) -> float:
    """The factor `metric` is shown at in tables, from its scorer (e.g. "lpips_unedited" -> 1000)."""
    return metric_info(metric).scale


def edit_type_means(results: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean of each metric per (sweep point, edit type) over the ok rows that have an edit type.

    Columns: POINT_KEYS, point (method and, when a method has several points, its label),
    edit_type (`ALL` for the point's mean over all its images), edit_type_name, n, then one column
    per metric (raw values, finite ones averaged).
    Empty when no ok row has `labels['edit_type']`. `metrics` defaults to PIE-Bench's that were
    scored, else to every score present.
    """
    ok = results[results["status"].eq("ok")].reset_index(drop=True)
    labels = [lab or {} for lab in ok["labels"]] if "labels" in ok else [{}] * len(ok)
    edit_type = pd.Series([lab.get("edit_type") for lab in labels], dtype="object")
    keep = edit_type.notna().to_numpy()
    if not keep.any():
        return pd.DataFrame()
    ok, labels, edit_type = ok[keep].reset_index(drop=True), [lab for lab, k in zip(labels, keep) if k], edit_type[keep]
    scores = pd.DataFrame([s or {} for s in ok["scores"]], dtype="float64")
    if metrics is None:
        metrics = [m for m in PIE_BENCH_METRICS if m in scores.columns] or sorted(scores.columns)
    scores = scores.reindex(columns=metrics).where(np.isfinite(scores.reindex(columns=metrics)))
    frame = ok[POINT_KEYS].assign(backbone=ok["backbone"].fillna("")).reset_index(drop=True)
    frame["edit_type"] = edit_type.astype(str).to_numpy()
    frame["edit_type_name"] = [lab.get("edit_type_name", "") for lab in labels]
    frame = pd.concat([frame, scores], axis=1)

    points = frame[POINT_KEYS].drop_duplicates().reset_index(drop=True)
    points["label"] = label_points(points)
    several = points["method"].map(points["method"].value_counts()) > 1
    points["point"] = np.where(several, points["method"] + " (" + points["label"] + ")", points["method"])
    frame = frame.merge(points[[*POINT_KEYS, "point"]], on=POINT_KEYS, how="left")
    keys = [*POINT_KEYS, "point", "edit_type", "edit_type_name"]
    both = pd.concat([frame, frame.assign(edit_type=ALL, edit_type_name="")], ignore_index=True)
    grouped = both.groupby(keys, sort=False, dropna=False)
    out = grouped[metrics].mean().reset_index()
    out.insert(len(keys), "n", grouped.size().to_numpy())
    return out


def edit_type_markdown(results: pd.DataFrame, metrics: list[str] | None = None) -> str | None:
    """The per-edit-type tables as markdown, or None when no ok row has an edit type."""
    means = edit_type_means(results, metrics)
    if means.empty:
        return None
    metrics = [c for c in means.columns if c not in {*POINT_KEYS, "point", "edit_type", "edit_type_name", "n"}]
    points = list(dict.fromkeys(means["point"]))
    types = sorted(
        {(t, name) for t, name in zip(means["edit_type"], means["edit_type_name"]) if t != ALL},
        key=lambda t: _type_order(t[0]),
    )
    lines = [
        "# Per edit type",
        "",
        "Cells: mean over the images of that edit type (non-finite values left out), in PIE-Bench's scale "
        "(named in each heading); n in the last column counts images per edit type and point.",
        "",
    ]
    for metric in metrics:
        info, scale = metric_info(metric), display_scale(metric)
        arrow = {True: " ↑", False: " ↓", None: ""}[info.higher_is_better]
        lines += [f"## {info.display}{arrow}" + (f" (x{scale:g})" if scale != 1 else ""), ""]
        lines += [_row(["edit type", *points, "n"]), _row(["---"] * (len(points) + 2))]
        for type_id, type_name in [*types, (ALL, "")]:
            here = means[means["edit_type"].eq(type_id)].set_index("point")
            cells = [_fmt(here[metric].get(p, np.nan) * scale) for p in points]
            n = "/".join(str(int(here["n"].get(p, 0))) for p in points)
            lines.append(_row([f"{type_id} {type_name}".strip(), *cells, n]))
        lines.append("")
    return "\n".join(lines)


def reconstruction_markdown(results: pd.DataFrame, summary: pd.DataFrame) -> str | None:
    """The reconstruction table (PSNR, SSIM, LPIPS per point), or None when the run is not one.

    A run is a reconstruction run when it has ok rows and each has its source prompt equal to its
    target prompt. The `vae_roundtrip` rows are labelled "(upper bound)" and listed first.
    """
    ok = results[results["status"].eq("ok")]
    if ok.empty or not ok["source_prompt"].eq(ok["target_prompt"]).all():
        return None
    metrics = [m for m in RECONSTRUCTION_METRICS if f"{m}_mean" in summary.columns]
    if not metrics:
        return None
    table = summary.sort_values(f"{metrics[0]}_mean", ascending=False, na_position="last", kind="stable")
    table = pd.concat([table[table["method"].eq(UPPER_BOUND_METHOD)], table[table["method"].ne(UPPER_BOUND_METHOD)]])
    lines = [
        "# Reconstruction",
        "",
        "Inversion then reconstruction with the source prompt (source = target prompt). Cells: mean ± half-width "
        f"of the bootstrap CI over images. `{UPPER_BOUND_METHOD}` is the autoencoder alone: the upper bound.",
        "",
    ]
    header = ["method", "point", "n", *(f"{metric_info(m).display}{' ↑' if metric_info(m).higher_is_better else ' ↓'}" for m in metrics)]
    lines += [_row(header), _row(["---"] * len(header))]
    for _, point in table.iterrows():
        method = point["method"] + (" (upper bound)" if point["method"] == UPPER_BOUND_METHOD else "")
        cells = [format_ci(point[f"{m}_mean"], point[f"{m}_ci_low"], point[f"{m}_ci_high"]) for m in metrics]
        lines.append(_row([method, point["label"], str(point["n"]), *cells]))
    return "\n".join(lines) + "\n"


def write_protocol_tables(results: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write `edit_types.md` and `reconstruction.md` into `out_dir` when the run has them; return their paths.

    A file that does not apply to this run is removed, so a rebuilt report has no stale table.
    """
    written = []
    for name, text in (
        ("edit_types.md", edit_type_markdown(results)),
        ("reconstruction.md", reconstruction_markdown(results, summary)),
    ):
        path = out_dir / name
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
            written.append(path)
    return written


def _type_order(type_id: str) -> tuple[int, float, str]:
    try:
        return 0, float(type_id), ""
    except ValueError:
        return 1, 0.0, type_id


def _fmt(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "–"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
