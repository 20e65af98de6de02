"""The run lock: one driver per run directory (bench/lock.py)."""

import json
import os
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from editsweep.bench.lock import RunLock, RunLockError
from editsweep.bench.plan import plan
from editsweep.bench.runner import run_sweep
from editsweep.bench.store import RunStore
from editsweep.bench.worker import task_row


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_holder(store: RunStore, **fields) -> None:
    now = datetime.now(timezone.utc).isoformat()
    holder = dict(host=socket.gethostname(), pid=os.getpid(), run_id="other-run", started_at=now, refreshed_at=now,
                  ttl_s=60.0, token="someone-else")  # fmt: skip
    holder.update(fields)
    Path(store.path("lock.json")).write_text(json.dumps(holder))


def test_a_second_lock_is_refused_naming_the_holder_and_released_locks_can_be_taken(tmp_path):
    store = RunStore(str(tmp_path))
    first = RunLock(store, "run-1").acquire()
    with pytest.raises(RunLockError) as err:
        RunLock(store, "run-2").acquire()
    message = str(err.value)
    assert "run-1" in message and socket.gethostname() in message and f"pid {os.getpid()}" in message
    assert "--break-lock" not in message  # a live holder is not offered to be broken
    first.release()
    assert not Path(store.path("lock.json")).exists()
    second = RunLock(store, "run-2").acquire()
    assert json.loads(Path(store.path("lock.json")).read_text())["run_id"] == "run-2"
    second.release()


def test_a_live_holder_is_not_broken_even_with_the_flag(tmp_path):
    store = RunStore(str(tmp_path))
    held = RunLock(store, "run-1").acquire()
    with pytest.raises(RunLockError, match="still running"):
        RunLock(store, "run-2").acquire(break_stale=True)
    held.release()


def test_a_stale_lock_of_a_dead_process_is_broken_only_with_the_flag(tmp_path):
    store = RunStore(str(tmp_path))
    write_holder(store, pid=dead_pid())
    with pytest.raises(RunLockError, match="--break-lock") as err:
        RunLock(store, "run-2").acquire()
    assert "no longer running" in str(err.value)
    lock = RunLock(store, "run-2").acquire(break_stale=True)
    assert json.loads(Path(store.path("lock.json")).read_text())["run_id"] == "run-2"
    lock.release()


def test_an_expired_lease_of_another_host_is_stale(tmp_path):
    store = RunStore(str(tmp_path))
    old = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    write_holder(store, host="elsewhere", pid=1, refreshed_at=old, ttl_s=60.0)
    with pytest.raises(RunLockError, match="not refreshed"):
        RunLock(store, "run-2").acquire()
    RunLock(store, "run-2").acquire(break_stale=True).release()
    fresh = datetime.now(timezone.utc).isoformat()
    write_holder(store, host="elsewhere", pid=1, refreshed_at=fresh, ttl_s=60.0)
    with pytest.raises(RunLockError, match="elsewhere"):
        RunLock(store, "run-3").acquire(break_stale=True)


def test_the_lease_is_refreshed_and_a_lost_lease_is_noticed(tmp_path):
    store = RunStore(str(tmp_path))
    lock = RunLock(store, "run-1", ttl_s=60.0).acquire()
    before = json.loads(Path(store.path("lock.json")).read_text())["refreshed_at"]
    assert lock.refresh() and json.loads(Path(store.path("lock.json")).read_text())["refreshed_at"] >= before
    write_holder(store, run_id="thief")  # broken and taken by another driver meanwhile
    assert not lock.refresh() and not lock.held()
    lock.release()  # leaves the other driver's lock alone
    assert json.loads(Path(store.path("lock.json")).read_text())["run_id"] == "thief"


def test_a_garbage_lock_file_is_a_clear_error(tmp_path):
    store = RunStore(str(tmp_path))
    Path(store.path("lock.json")).write_text("{not json")
    with pytest.raises(RunLockError, match="lock.json"):
        RunLock(store, "run-1").acquire()
    RunLock(store, "run-1").acquire(break_stale=True).release()


def done_spec(make_spec, run_dir):
    """A spec whose every task is already stored: `run_sweep` then runs without Ray."""
    spec = make_spec([{"name": "copy"}], n=2)
    tasks, _ = plan(spec)
    RunStore(str(run_dir)).write_rows([task_row(t, status="ok") for t in tasks])
    return spec


def test_run_sweep_on_a_locked_run_directory_is_refused(make_spec, tmp_path):
    spec = done_spec(make_spec, tmp_path)
    held = RunLock(RunStore(str(tmp_path)), "run-1").acquire()
    with pytest.raises(RunLockError, match="run-1"):
        run_sweep(spec, tmp_path, progress=False)
    assert RunStore(str(tmp_path)).list_files("manifests") == []  # refused before writing anything
    held.release()
    summary = run_sweep(spec, tmp_path, progress=False)
    assert summary.n_skipped == 2 and not Path(tmp_path / "lock.json").exists()


def test_the_lock_is_released_when_the_run_fails(make_spec, tmp_path, monkeypatch):
    import editsweep.bench.runner as runner

    spec = done_spec(make_spec, tmp_path)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "plan", boom)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, progress=False)
    assert not Path(tmp_path / "lock.json").exists()


def test_cli_break_lock(make_spec, tmp_path, capsys):
    import yaml

    from editsweep.bench.cli import main

    spec = done_spec(make_spec, tmp_path / "run")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    write_holder(RunStore(str(tmp_path / "run")), pid=dead_pid())
    args = ["run", str(path), "--out", str(tmp_path / "run"), "--quiet", "--no-report"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "other-run" in err and "--break-lock" in err and "Traceback" not in err
    assert main([*args, "--break-lock"]) == 0
    assert "2 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_driver_on_a_running_sweep_is_refused_and_the_first_completes(
    ray_session, make_spec, run_invariants, spawn_driver, tmp_path
):
    """Fault injection: a second driver while the first runs; the first's run stays exact."""

    log = tmp_path / "executions.log"
    spec = make_spec(
        [{"name": "stub", "invert": {"log": str(log), "sleep_ms": 300}, "edit": {}}],
        n=6,
        execution={"workers": 1, "batch_size": 1, "flush_seconds": 0},
    )
    run_dir = tmp_path / "run"
    driver = spawn_driver(spec, run_dir)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and log.read_text()):  # the first driver holds the lock and runs units
            assert driver.poll() is None and time.monotonic() < deadline, "the first driver did not start"
            time.sleep(0.05)
        with pytest.raises(RunLockError, match=f"pid {driver.pid}"):
            run_sweep(spec, run_dir, progress=False)
        assert driver.wait(timeout=120) == 0
    finally:
        driver.kill()
    tasks, _ = plan(spec)
    run_invariants(run_dir, {t.task_key for t in tasks})
    assert len(log.read_text().splitlines()) == 6  # nothing ran twice
