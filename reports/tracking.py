"""Log a run's summary and report files to MLflow, by default into a SQLite file in the run dir.

The tracking URI is the `tracking_uri` argument, else `MLFLOW_TRACKING_URI`, else the embedded
`sqlite:///<abs run_dir>/mlflow.db` (MLflow's own default would be a file in the current
directory). For a SQLite store, a new experiment keeps its artifacts in `mlartifacts/` next to
the database file, as an absolute location; a tracking server chooses its own. Every call makes
a new MLflow run, so a report can be rebuilt on the same run dir. Importing this module sets
MLFLOW_DISABLE_TELEMETRY=true unless it is already set.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from editsweep.reports.aggregate import POINT_KEYS, summary_metrics, uses_toy_weights  # noqa: E402

DEFAULT_EXPERIMENT = "editsweep"
_MAX_KEY = 250  # MLflow's limit on metric and param names
_MAX_PARAM_VALUE = 6000  # MLflow's limit on param values


def resolve_tracking_uri(run_dir: str, tracking_uri: str | None = None) -> str:
    """The argument, else MLFLOW_TRACKING_URI, else `sqlite:///<abs run_dir>/mlflow.db`."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if "://" in run_dir and not run_dir.startswith("file://"):
        raise ValueError(f"run dir {run_dir!r} is not local: pass tracking_uri or set MLFLOW_TRACKING_URI")
    root = Path(run_dir.removeprefix("file://")).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root}/mlflow.db"


def metric_key(*parts: str) -> str:
    """Join parts with "/" into a valid MLflow name: other characters become "_", "=" too."""
    clean = []
    for part in parts:
        text = re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(part).replace(", ", " ")).strip()
        clean.append("_" if text in {"", ".", ".."} else text)
    return "/".join(clean)


def point_prefixes(summary: pd.DataFrame) -> list[str]:
    """`<dataset>/<method>/<label>` per summary row; a hash of the point makes clashes unique."""
    prefixes = [metric_key(r["dataset"][:50], r["method"][:50], r["label"][:120]) for _, r in summary.iterrows()]
    counts = pd.Series(prefixes).value_counts()
    return [
        f"{p} {zlib.crc32(repr(tuple(r[k] for k in POINT_KEYS)).encode()):08x}" if counts[p] > 1 else p
        for p, (_, r) in zip(prefixes, summary.iterrows(), strict=True)
    ]


def _summary_metrics(summary: pd.DataFrame, timestamp: int) -> list[Metric]:
    """Mean, CI bounds and counts of every point, skipping undefined values."""
    out = []
    for prefix, (_, point) in zip(point_prefixes(summary), summary.iterrows(), strict=True):
        values = {"n": point["n"], "n_error": point["n_error"]}
        for metric in summary_metrics(summary):
            values.update({f"{metric}_{s}": point[f"{metric}_{s}"] for s in ("mean", "ci_low", "ci_high")})
        for name, value in values.items():
            if pd.notna(value) and np.isfinite(value):
                out.append(Metric(f"{prefix}/{name}", float(value), timestamp, 0))
    return out


def _experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    """Get or create the experiment; a new one on SQLite stores artifacts next to the database."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = (Path(tracking_uri.removeprefix("sqlite:///")).absolute().parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a concurrent report
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def log_to_mlflow(
    run_dir: str,
    summary: pd.DataFrame,
    artifacts: list[str | Path],
    params: Mapping[str, Any],
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> str:
    """Log one new MLflow run with the summary's metrics, `params` and `artifacts`; returns its id.

    Metrics are named `<dataset>/<method>/<point label>/<metric>_mean` (also `_ci_low`,
    `_ci_high`, and `n`, `n_error` per point). Files land under the run's `report/` artifact path.
    """
    uri = resolve_tracking_uri(run_dir, tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, uri, experiment or DEFAULT_EXPERIMENT)
    run = client.create_run(
        experiment_id,
        run_name=f"report {Path(run_dir.rstrip('/')).name}",
        tags={
            "editsweep.run_dir": run_dir,
            "editsweep.random_weights": str(bool(summary["random_weights"].any())),
            "editsweep.toy_weights": str(uses_toy_weights(summary["weights"])),
        },
    )
    run_id = run.info.run_id
    try:
        client.log_batch(
            run_id,
            metrics=_summary_metrics(summary, int(time.time() * 1000)),
            params=[Param(metric_key(k)[:_MAX_KEY], str(v)[:_MAX_PARAM_VALUE]) for k, v in params.items()],
            tags=[RunTag("editsweep.metrics", ",".join(summary_metrics(summary)))],
        )
        for path in artifacts:
            client.log_artifact(run_id, str(path), artifact_path="report")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def mlflow_run_url(tracking_uri: str, run_id: str) -> str | None:
    """The web page of MLflow run `run_id` when `tracking_uri` is an http(s) tracking server, else None
    (a SQLite file or folder has no page to link to)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    experiment_id = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def log_folder(tracking_uri: str, run_id: str, folder: str | Path, artifact_path: str) -> None:
    """Log every file under `folder` to the (finished) MLflow run `run_id` under `artifact_path`."""
    MlflowClient(tracking_uri=tracking_uri).log_artifacts(run_id, str(folder), artifact_path=artifact_path)
