"""The report stage end to end on synthetic run dirs: files, MLflow runs, degenerate runs."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from editsweep.bench.store import RunStore
from editsweep.reports.report import ReportError, build_report
from editsweep.reports.tracking import MlflowClient


@pytest.fixture(scope="module")
def shared_uri(tmp_path_factory, mlflow_db_template) -> str:
    """One tracking DB for the tests that are not about the default URI."""
    path = tmp_path_factory.mktemp("tracking") / "mlflow.db"
    shutil.copy(mlflow_db_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def reported(run_factory, rows_factory, mlflow_db_template):
    """A run with a manifest, reported twice with the default (embedded) tracking URI."""
    store = run_factory(rows_factory())
    store.write_json("manifests/20260101T000000Z-abc123.json", {"spec": {"name": "old", "mlflow": {}}})
    store.write_json("manifests/20260102T000000Z-def456.json", {"spec": {"name": "toy-sweep", "mlflow": {}}})
    store.write_json("manifests/20260102T000000Z-def456-summary.json", {"n_ok": 48})
    shutil.copy(mlflow_db_template, store.path("mlflow.db"))
    return store, build_report(store.root), build_report(store.root)


def test_report_files(reported):
    store, first, _ = reported
    assert first.report_dir == first.summary_csv.parent and str(first.report_dir) == store.path("report")
    summary = pd.read_csv(first.summary_csv)
    assert len(summary) == 6 and {"clip_t_mean", "lpips_ci_low", "label", "n_error"} <= set(summary.columns)
    for png in (first.tradeoff_png, first.grid_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leaderboard = first.leaderboard_md.read_text()
    assert "random weights" in leaderboard and "CLIP-T ↑ (sorted)" in leaderboard
    assert first.notes == []


def test_each_build_is_a_finished_mlflow_run_in_the_specs_experiment(reported):
    store, first, second = reported
    assert first.tracking_uri == f"sqlite:///{store.root}/mlflow.db"
    client = MlflowClient(tracking_uri=first.tracking_uri)
    experiment = client.get_experiment_by_name("toy-sweep")
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {first.mlflow_run_id, second.mlflow_run_id}
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert "toy/nti/guidance_7.5/clip_t_mean" in run.data.metrics
        assert run.data.params["error_tasks"] == "1"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
        names = ("summary.csv", "leaderboard.md", "tradeoff.png", "grid.png", "matched.md", "matched.csv", "matched.png")
        assert artifacts == {f"report/{n}" for n in (*names, "site")}


def test_missing_metric_skips_the_plot_with_a_note(run_factory, rows_factory, shared_uri):
    rows = rows_factory(n_samples=2, n_seeds=1)
    for row in rows:
        row["scores"] = {k: v for k, v in row["scores"].items() if k != "clip_t"}
    result = build_report(run_factory(rows).root, tracking_uri=shared_uri, experiment="no-clip")
    assert result.tradeoff_png is None and result.grid_png.exists()
    assert result.notes == [
        "trade-off plot skipped: no clip_t scores in this run",
        "matched-fidelity comparison skipped: no clip_t scores in this run",
    ]
    assert not (result.report_dir / "matched.md").exists()
    assert "trade-off plot skipped" in result.leaderboard_md.read_text()
    assert "LPIPS ↓ (sorted)" in result.leaderboard_md.read_text()


def test_all_error_run_still_reports(run_factory, row_maker, shared_uri):
    rows = [row_maker("m", g, 0, 0, {}, status="error", error="CUDA error") for g in (3.0, 7.5)]
    result = build_report(run_factory(rows).root, tracking_uri=shared_uri)
    assert result.tradeoff_png is None and result.grid_png is None
    assert len(result.notes) == 3
    leaderboard = result.leaderboard_md.read_text()
    assert "m / guidance=3: 1 failed tasks (0 ok); most common: `CUDA error`" in leaderboard
    run = MlflowClient(tracking_uri=shared_uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["toy/m/guidance_7.5/n_error"] == 1


def test_empty_or_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no results in run dir"):
        build_report(str(tmp_path))
    RunStore(str(tmp_path)).write_json("manifests/x.json", {"spec": {}})
    with pytest.raises(ReportError, match="no results in run dir"):
        build_report(str(tmp_path))
    with pytest.raises(ReportError, match="does not exist"):
        build_report(str(tmp_path / "nope"))
    assert not (tmp_path / "report").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_dataset_with_two_instances_is_named_in_the_notes(run_factory, rows_factory):
    rows = rows_factory()
    for i, row in enumerate(rows):
        row["dataset_params"] = '{"n":4}' if i % 2 else '{"n":8}'
    result = build_report(run_factory(rows).root)
    assert any("has 2 instances" in note for note in result.notes)
