"""MLflow logging: embedded SQLite default, metric names, artifacts, repeated runs, env override."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from editsweep.bench.store import SCHEMA
from editsweep.reports.aggregate import aggregate
from editsweep.reports.tracking import MlflowClient, log_to_mlflow, metric_key, point_prefixes, resolve_tracking_uri


@pytest.fixture(scope="module")
def logged(tmp_path_factory, mlflow_db_template, rows_factory):
    """Two reports logged into one run dir with the default tracking URI."""
    run_dir = tmp_path_factory.mktemp("tracked")
    shutil.copy(mlflow_db_template, run_dir / "mlflow.db")
    summary = aggregate(pd.DataFrame(rows_factory()).reindex(columns=SCHEMA.names))
    artifact = run_dir / "leaderboard.md"
    artifact.write_text("# Leaderboard\n")
    ids = [log_to_mlflow(str(run_dir), summary, [artifact], {"n_boot": 1000, "odd/key=": "x"}) for _ in range(2)]
    return run_dir, summary, ids


def test_default_uri_is_sqlite_in_the_run_dir(tmp_path):
    assert resolve_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri(str(tmp_path), "http://mlflow:5000") == "http://mlflow:5000"
    with pytest.raises(ValueError, match="not local"):
        resolve_tracking_uri("s3://bucket/run")


def test_run_has_point_metrics_params_and_artifacts(logged):
    run_dir, summary, ids = logged
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    run = client.get_run(ids[0])
    assert run.info.status == "FINISHED"
    point = summary[(summary["method"] == "ddim") & (summary["label"] == "guidance=7.5")].iloc[0]
    metrics = run.data.metrics
    assert metrics["toy/ddim/guidance_7.5/clip_t_mean"] == pytest.approx(point["clip_t_mean"])
    assert metrics["toy/ddim/guidance_7.5/lpips_ci_high"] == pytest.approx(point["lpips_ci_high"])
    assert metrics["toy/nti/guidance_12/n_error"] == 1
    assert len(metrics) == len(summary) * (2 + 3 * 3)
    assert run.data.params == {"n_boot": "1000", "odd_key_": "x"}
    assert [a.path for a in client.list_artifacts(ids[0], "report")] == ["report/leaderboard.md"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "editsweep"
    assert experiment.artifact_location == (run_dir / "mlartifacts").as_uri()
    assert (run_dir / "mlartifacts" / ids[0] / "artifacts" / "report" / "leaderboard.md").exists()


def test_each_call_is_a_new_run(logged):
    run_dir, _, ids = logged
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("editsweep")
    runs = client.search_runs([experiment.experiment_id])
    assert ids[0] != ids[1] and {r.info.run_id for r in runs} == set(ids)


def test_tracking_uri_from_env_and_experiment_name(tmp_path, monkeypatch, mlflow_db_template, logged):
    _, summary, _ = logged
    shutil.copy(mlflow_db_template, tmp_path / "elsewhere.db")
    uri = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = tmp_path / "run"
    run_id = log_to_mlflow(str(run_dir), summary, [], {}, experiment="mine")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "mine"
    assert not (run_dir / "mlflow.db").exists()
    assert Path(tmp_path / "mlartifacts").as_uri() == client.get_experiment_by_name("mine").artifact_location


def test_metric_key_is_a_valid_mlflow_name():
    assert metric_key("pie/bench", "p2p", "guidance=7.5, mask=[1,2]", "..") == "pie_bench/p2p/guidance_7.5 mask__1_2_/_"


def test_clashing_point_names_get_a_hash(logged):
    _, summary, _ = logged
    twins = pd.concat([summary.iloc[:1], summary.iloc[:1].assign(edit_params='{"other": 1}')], ignore_index=True)
    first, second = point_prefixes(twins)
    assert first != second and first.startswith("toy/ddim/guidance_3 ")
