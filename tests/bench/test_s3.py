"""An S3 run directory against a local S3-compatible server (moto's, started here): run, resume, report.

The workers of the session's Ray (started by tests/conftest.py without AWS_* variables) get the
credentials and endpoint through the actors' runtime_env (`rundir.store_env`).
"""

import json
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from editsweep.bench.cli import main
from editsweep.bench.lock import RunLock, RunLockError
from editsweep.bench.store import RunStore

BUCKET = "editsweep-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; AWS_* set for this module's tests."""
    import pyarrow.fs as pafs

    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = _free_port()
    server = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the server accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.05)
        with pytest.MonkeyPatch.context() as mp:
            env = dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                       AWS_ENDPOINT_URL=endpoint)  # fmt: skip
            for key, value in env.items():
                mp.setenv(key, value)
            fs = pafs.S3FileSystem(
                access_key="testing", secret_key="testing", region="us-east-1", endpoint_override=endpoint,
                allow_bucket_creation=True,
            )  # fmt: skip
            fs.create_dir(BUCKET)
            yield endpoint
    finally:
        server.kill()
        server.wait()


def test_lease_lock_on_an_object_store(s3):
    store = RunStore(f"s3://{BUCKET}/locks")
    first = RunLock(store, "run-1", settle_s=0.1).acquire()
    with pytest.raises(RunLockError, match="run-1"):
        RunLock(store, "run-2", settle_s=0.1).acquire()
    assert first.refresh() and first.held()
    first.release()
    assert store.fs.get_file_info(store.path("lock.json")).type.name == "NotFound"
    old = (datetime.now(timezone.utc) - timedelta(minutes=10)).isoformat()
    with store.fs.open_output_stream(store.path("lock.json")) as out:  # a driver that vanished long ago
        out.write(json.dumps(dict(host="elsewhere", pid=1, run_id="gone", refreshed_at=old, ttl_s=60)).encode())
    with pytest.raises(RunLockError, match="has not refreshed its lease"):
        RunLock(store, "run-3", settle_s=0.1).acquire()
    RunLock(store, "run-3", settle_s=0.1).acquire(break_stale=True).release()


def test_a_missing_bucket_is_a_clear_error_before_anything_starts(s3, tmp_path, capsys):
    spec = write_spec(tmp_path)
    for extra in (["--dry-run"], []):
        assert main(["run", str(spec), "--out", "s3://no-such-bucket/run", "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert "the bucket 'no-such-bucket' of --out s3://no-such-bucket/run does not exist" in err
        assert s3 in err and "Traceback" not in err


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: s3-test\ndatasets: [{name: synthetic, params: {n: 2}}]\nmethods: [{name: copy}]\n"
        "metrics: {psnr: {}}\nexecution: {workers: 1}\n"
    )
    return path


@pytest.mark.slow
def test_a_run_on_s3_completes_resumes_and_reports(ray_session, s3, tmp_path, monkeypatch, capsys, run_invariants):
    from editsweep.bench.plan import plan
    from editsweep.bench.spec import load_spec
    from editsweep.bench.status import format_status, run_status

    spec = write_spec(tmp_path)
    uri = f"s3://{BUCKET}/run"
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(spec), "--out", uri, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 tasks: 0 already done, 2 ok, 0 errors" in out and uri in out
    assert (tmp_path / "run-report" / "leaderboard.md").is_file()  # the default local report folder
    assert (tmp_path / "run-report" / "mlflow.db").is_file()
    assert (tmp_path / "run-report" / "site" / "samples").is_dir()  # the site's gallery, images read from S3
    assert len(list((tmp_path / "run-report" / "site" / "images").glob("*.png"))) == 4  # 2 inputs, 2 edits

    assert main(["run", str(spec), "--out", uri, "--quiet", "--no-report"]) == 0
    assert "2 tasks: 2 already done, 0 ok" in capsys.readouterr().out

    assert main(["report", uri, "--report-dir", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "summary.csv").is_file() and (tmp_path / "elsewhere" / "grid.png").is_file()
    assert "image missing" not in (tmp_path / "elsewhere" / "leaderboard.md").read_text()

    tasks, _ = plan(load_spec(spec))
    run_invariants(uri, {t.task_key for t in tasks})
    store = RunStore(uri)
    assert len(store.list_files("images")) == 2
    assert store.fs.get_file_info(store.path("lock.json")).type.name == "NotFound"  # released
    assert "2 done, 0 failed, 0 remaining" in format_status(run_status(uri))
