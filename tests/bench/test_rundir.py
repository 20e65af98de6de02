"""Where a run's files go: resolved and checked on the driver, and checked on every worker (bench/rundir.py)."""

import os
from pathlib import Path

import pytest

from editsweep.bench.cli import main
from editsweep.bench.plan import plan
from editsweep.bench.rundir import RunDirError, check_marker, store_env, write_marker
from editsweep.bench.runner import run_sweep
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker, task_row


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\ndatasets: [{name: synthetic, params: {n: 1}}]\nmethods: [{name: copy}]\nmetrics: {psnr: {}}\n"
    )
    return path


def test_a_relative_out_is_made_absolute_before_anything_is_written(make_spec, tmp_path, monkeypatch):
    spec = make_spec([{"name": "copy"}], n=1)
    monkeypatch.chdir(tmp_path)
    RunStore(str(tmp_path / "rel")).write_rows([task_row(t, status="ok") for t in plan(spec)[0]])
    summary = run_sweep(spec, "rel", progress=False)
    assert summary.run_dir == str(tmp_path / "rel")
    store = RunStore(summary.run_dir)
    assert store.read_json(".editsweep-run")["run_id"] == summary.run_id
    assert store.latest_manifest().run_id == summary.run_id


def test_a_worker_that_cannot_read_the_marker_stops_with_a_clear_message(make_spec, tmp_path):
    spec = make_spec([{"name": "copy"}], n=1)
    with pytest.raises(RunDirError, match="shared by all nodes.*object store URI") as err:
        SweepWorker(spec, str(tmp_path / "node-local"), "run-1", check_marker=True)
    assert "is missing" in str(err.value) and str(tmp_path / "node-local") in str(err.value)
    store = RunStore(str(tmp_path / "run"))
    write_marker(store, "run-0")  # a folder left by an earlier run on this node
    with pytest.raises(RunDirError, match="names run 'run-0', not run 'run-1'"):
        SweepWorker(spec, str(tmp_path / "run"), "run-1", check_marker=True)
    write_marker(store, "run-1")
    assert SweepWorker(spec, str(tmp_path / "run"), "run-1", check_marker=True).run_id == "run-1"
    check_marker(RunStore(str(tmp_path / "node-local")), "run-1")  # outside a Ray actor: not required


@pytest.mark.parametrize("dry_run", [False, True])
def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys, dry_run):
    out = tmp_path / "taken.txt"
    out.write_text("not a folder")
    assert main(["run", str(write_spec(tmp_path)), "--out", str(out), "--quiet", *(["--dry-run"] * dry_run)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is a file" in err and "Traceback" not in err


def test_out_that_cannot_be_written_is_a_clear_error(tmp_path, capsys):
    out = "/sys/editsweep-test-run"  # not writable, even by root
    assert main(["run", str(write_spec(tmp_path)), "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is not writable" in err and "Traceback" not in err
    (tmp_path / "taken.txt").write_text("a file")
    below_a_file = f"{tmp_path}/taken.txt/run"
    assert main(["run", str(write_spec(tmp_path)), "--out", below_a_file, "--quiet", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"--out {below_a_file} cannot be created: {tmp_path}/taken.txt is not a writable folder" in err


def test_the_store_environment_is_passed_for_uris_only(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/creds.json")
    monkeypatch.setenv("UNRELATED_SECRET", "no")
    env = store_env("s3://bucket/run")
    assert env["AWS_ACCESS_KEY_ID"] == "key" and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/creds.json" and "UNRELATED_SECRET" not in env
    assert store_env("/data/run") == {} and store_env("file:///data/run") == {}


def test_ensure_ray_passes_the_store_environment_to_the_job(monkeypatch):
    import editsweep.bench.runner as runner

    calls = []
    monkeypatch.setattr(runner.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runner.ray, "init", lambda **kwargs: calls.append(kwargs))
    runner._ensure_ray("auto", {"AWS_REGION": "eu-west-1"})
    runner._ensure_ray(None, {})
    assert calls[0]["runtime_env"] == {"env_vars": {"AWS_REGION": "eu-west-1"}} and calls[0]["address"] == "auto"
    assert calls[1]["runtime_env"] is None
    assert os.environ.get("RAY_AUTH_MODE") == "disabled"
