"""The report stage: read a run's result rows, write summary, leaderboard and figures, log to MLflow.

Everything comes from the run store (no model runs here) and lands in `<run_dir>/report/`,
overwriting an earlier report; each build is a new MLflow run. A run directory on an object store
(s3://bucket/run) is read in place and reported into a local folder (`report_dir`, default
`./<run name>-report`), with the default MLflow database there too. A figure that cannot be drawn
(a metric nobody scored, no ok row) is skipped with a note in the leaderboard and the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from editsweep.bench.adaptive import SEARCH_FILE
from editsweep.bench.store import RunStore
from editsweep.reports.aggregate import aggregate, summary_metrics
from editsweep.reports.breakdown import write_protocol_tables
from editsweep.reports.leaderboard import leaderboard_markdown
from editsweep.reports.matched import MatchedOptions, MatchedResult, matched_comparison, matched_eligible, write_matched
from editsweep.reports.plots import image_grid, tradeoff_panels
from editsweep.reports.set_metrics import add_set_metrics
from editsweep.reports.site import SiteRun, write_site
from editsweep.reports.tracking import log_folder, log_to_mlflow, mlflow_run_url, resolve_tracking_uri


class ReportError(RuntimeError):
    """The report cannot be built: the message says what is missing."""


# Preservation outside the edit mask against reaching the target attribute (`shapes_truth`).
GROUND_TRUTH_PAIR = ("outside_psnr", "attr_acc")

@dataclass
class ReportResult:
    """Where a report's files are, its MLflow run, and what was skipped and why."""

    report_dir: Path
    summary_csv: Path
    leaderboard_md: Path
    tradeoff_png: Path | None
    grid_png: Path | None
    mlflow_run_id: str
    tracking_uri: str
    notes: list[str] = field(default_factory=list)
    set_figures: list[Path] = field(default_factory=list)  # CSFID-LPIPS curve when features were stored
    matched_files: list[Path] = field(default_factory=list)  # matched.md, .csv, .png (reports/matched.py)
    site_index: Path | None = None  # the static site's index.html (reports/site.py), None when not written
    site_run: SiteRun | None = None  # what the site shows of this run, for a site across runs


def build_report(
    run_dir: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    *,
    x: str = "lpips",
    y: str = "clip_t",
    reference_stats: str | None = None,
    report_dir: str | Path | None = None,
    site: bool | str | Path = True,
) -> ReportResult:
    """Build the report of the run in `run_dir` and log it to MLflow (see `log_to_mlflow`).

    `tracking_uri` and `experiment` default to the `mlflow` section of the sweep spec in the run's
    newest manifest (as `editsweep run` uses them), the experiment then to the spec's name; the
    tracking URI then to MLFLOW_TRACKING_URI or a SQLite file in the run dir. The trade-off plot
    shows `y` against `x`. Set-level metrics (SFID, CSFID, FID, KID) come from stored Inception
    features and the reference stats file `reference_stats` (default: the dataset's
    `reference_stats` param in the spec), with a CSFID-LPIPS curve (`set_metrics.add_set_metrics`).
    The files go to `report_dir`: default `<run_dir>/report`, or `./<run name>-report` for a run
    dir on an object store, whose default MLflow database is then `<report_dir>/mlflow.db`.
    `site`: write the static site (`reports/site.py`) to `<report_dir>/site` (True), to the given
    folder, or not at all (False); it is logged to the MLflow run under `report/site` and links to
    the run when the tracking URI is an http(s) server.
    Raises ReportError when the run dir does not exist or has no result rows.
    """
    store = RunStore(run_dir)
    local = isinstance(store.fs, pafs.LocalFileSystem)
    if store.fs.get_file_info(store.root).type != pafs.FileType.Directory:
        raise ReportError(f"run dir {store.uri} does not exist")
    results = store.read_results()
    if results.empty:
        raise ReportError(f"no results in run dir {store.uri}: no result rows under {store.path('results')}")

    if report_dir is not None:
        out = Path(report_dir).expanduser().absolute()
    elif local:
        out = Path(store.path("report"))
    else:
        out = Path.cwd() / f"{store.root.rstrip('/').rsplit('/', 1)[-1]}-report"
    out.mkdir(parents=True, exist_ok=True)
    mlflow_root = store.root if local else str(out)
    spec = _sweep_spec(store)
    summary, set_figures, notes = add_set_metrics(aggregate(results), results, spec, out, reference_stats)
    notes += pooled_instance_notes(results) + search_notes(store)
    metrics = summary_metrics(summary)
    if not metrics:
        notes.append(f"no scores: none of the {len(results)} tasks has an ok row with scores")

    summary_csv = out / "summary.csv"
    summary.to_csv(summary_csv, index=False)
    tradeoff_png: Path | None = out / "tradeoff.png"
    missing = [m for m in (x, y) if m not in metrics or summary[f"{m}_mean"].isna().all()]
    if missing:
        notes.append(f"trade-off plot skipped: no {' or '.join(missing)} scores in this run")
        tradeoff_png.unlink(missing_ok=True)
        tradeoff_png = None
    else:
        pairs = [(x, y)]
        if all(m in metrics and summary[f"{m}_mean"].notna().any() for m in GROUND_TRUTH_PAIR):
            pairs.append(GROUND_TRUTH_PAIR)  # datasets with ground truth (shapes): the edit itself, judged
        tradeoff_panels(summary, tradeoff_png, pairs)
    grid_png: Path | None = out / "grid.png"
    if (results["status"].eq("ok") & results["image_path"].notna()).any():
        image_grid(store, results, grid_png)
    else:
        notes.append(f"image grid skipped: none of the {len(results)} tasks has an ok row with an image")
        grid_png.unlink(missing_ok=True)
        grid_png = None

    leaderboard_md = out / "leaderboard.md"
    text = leaderboard_markdown(summary, metrics, sort_by=y if y in metrics else (metrics[0] if metrics else None))
    matched_files, matched = _matched_comparison(results, summary, matched_options(spec, summary, x, y), out, notes)
    if notes:
        text += "\n## Notes\n\n" + "".join(f"- {note}\n" for note in notes)
    leaderboard_md.write_text(text)
    protocol_tables = write_protocol_tables(results, summary, out)

    uri = resolve_tracking_uri(mlflow_root, tracking_uri or spec.get("mlflow", {}).get("tracking_uri"))
    experiment = experiment or spec.get("mlflow", {}).get("experiment") or spec.get("name")
    params = {
        "run_dir": store.root if local else store.uri,
        "store_run_ids": ",".join(sorted(results["run_id"].dropna().unique())),
        "tasks": len(results),
        "error_tasks": int(results["status"].ne("ok").sum()),
        "methods": ",".join(sorted(results["method"].unique())),
        "datasets": ",".join(sorted(results["dataset"].unique())),
        "metrics": ",".join(metrics),
        "ci": summary.attrs["ci"],
        "n_boot": summary.attrs["n_boot"],
        "notes": " | ".join(notes),
    }
    artifacts = [p for p in (summary_csv, leaderboard_md, tradeoff_png, *set_figures, grid_png) if p is not None]
    artifacts += protocol_tables + matched_files
    run_id = log_to_mlflow(
        store.root if local else store.uri, summary, artifacts, params, tracking_uri=uri, experiment=experiment
    )
    manifest = store.latest_manifest()
    site_run = SiteRun(
        name=store.root.rstrip("/").rsplit("/", 1)[-1],
        store=store,
        results=results,
        summary=summary,
        spec=spec,
        manifest=manifest.model_dump() if manifest is not None else {},
        matched=matched,
        mlflow_url=mlflow_run_url(uri, run_id),
        notes=notes,
    )
    site_index = None
    if site is not False:
        site_dir = out / "site" if site is True else Path(site)
        site_index = write_site([site_run], site_dir, pairs=[(x, y), GROUND_TRUTH_PAIR])  # a pair without scores is left out
        log_folder(uri, run_id, site_dir, "report/site")
    return ReportResult(
        out,
        summary_csv,
        leaderboard_md,
        tradeoff_png,
        grid_png,
        run_id,
        uri,
        notes,
        set_figures,
        matched_files,
        site_index,
        site_run,
    )


def matched_options(spec: dict[str, Any], summary: pd.DataFrame, x: str, y: str) -> MatchedOptions:
    """The matched comparison's options: the spec's `report.matched` (bench/spec.py `MatchedSpec`).

    Unset there: the fidelity metric is the trade-off plot's `x`, the editability metrics its `y`
    plus CSFID when the summary has CSFID values. Raises ReportError when the section is invalid.
    """
    from editsweep.bench.spec import SpecError, load_matched_options

    try:
        section = load_matched_options(spec)
    except SpecError as err:
        raise ReportError(f"invalid report options in the run's spec: {err}") from None
    fidelity = section.fidelity or x
    if section.metrics:
        metrics = section.metrics
    else:
        has_csfid = "csfid_mean" in summary and summary["csfid_mean"].notna().any()
        metrics = [m for m in (y, *(["csfid"] if has_csfid else [])) if m != fidelity]
    return MatchedOptions(
        fidelity=fidelity,
        metrics=tuple(metrics),
        levels=tuple(section.levels) if section.levels else None,
        n_boot=section.n_boot,
        ci=section.ci,
    )


def _matched_comparison(
    results: pd.DataFrame, summary: pd.DataFrame, options: MatchedOptions, out: Path, notes: list[str]
) -> tuple[list[Path], MatchedResult | None]:
    """Write matched.md/.csv/.png when `matched_eligible` and return them with the result; else, for
    a run of several methods, a note (and no files, no result)."""
    why_not = matched_eligible(results, options, summary)
    if why_not is not None:
        if results["method"].nunique() > 1:
            notes.append(f"matched-fidelity comparison skipped: {why_not}")
        for name in ("matched.md", "matched.csv", "matched.png"):
            (out / name).unlink(missing_ok=True)
        return [], None
    result = matched_comparison(results, summary, options)
    notes += result.notes
    return list(write_matched(result, out, results)), result


def search_notes(store: RunStore) -> list[str]:
    """One note per adaptive search of the run (bench/adaptive.py's `search.json`): its outcome."""
    if store.fs.get_file_info(store.path(SEARCH_FILE)).type == pafs.FileType.NotFound:
        return []
    return [
        f"search methods[{r['entry']}] {r['method']} {r['search']['param']}: {r['outcome']['message']}"
        for r in store.read_json(SEARCH_FILE)["searches"]
    ]


def pooled_instance_notes(results: pd.DataFrame) -> list[str]:
    """One note per dataset name whose rows come from several instances (other params).

    Tasks of two instances are distinct (bench/plan.py), but tables and plots group by dataset
    name, so their numbers are pooled; the note says so rather than letting it pass unseen.
    """
    if "dataset_params" not in results:
        return []
    counts = results.groupby("dataset")["dataset_params"].nunique()
    return [
        f"dataset {name} has {n} instances (entries with different params); tables and plots pool them"
        for name, n in counts.items()
        if n > 1
    ]


def _sweep_spec(store: RunStore) -> dict[str, Any]:
    """The sweep spec in the run's newest manifest ({} when there is none; ManifestError when unreadable)."""
    manifest = store.latest_manifest()
    return manifest.spec if manifest is not None else {}
