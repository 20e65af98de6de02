"""The driver under failure: hung units, Ctrl-C, Ray's own exceptions, lost nodes, requests the
cluster cannot satisfy (issue 10, items 5-8, and the `device: cuda` check of item 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from editsweep.bench.plan import plan
from editsweep.bench.runner import run_sweep
from editsweep.bench.spec import SpecError
from editsweep.bench.store import RunStore

from .conftest import PLUGIN

FAULTS = str(Path(__file__).parent / "plugins" / "runner_faults.py")


def _keys(spec, samples=None):
    tasks, _ = plan(spec, set())
    return {t.task_key for t in tasks if samples is None or t.sample_id in samples}


@pytest.mark.parametrize("workers", [0, -2])
def test_workers_below_one_is_a_spec_error(make_spec, workers):
    with pytest.raises(SpecError, match=r"execution\.workers"):
        make_spec([{"name": "copy"}], execution={"workers": workers})


def test_device_cuda_without_a_gpu_fails_before_ray_starts(make_spec, tmp_path, monkeypatch):
    """With a local Ray (no --address, none running), the driver's own devices decide at once."""
    import ray
    import torch

    spec = make_spec([{"name": "copy"}], n=1, backbone={"name": "tiny", "device": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(RuntimeError, match="device is 'cuda'.*no GPU"):
        run_sweep(spec, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_an_actor_larger_than_every_node_is_refused_at_once(ray_session, make_spec, tmp_path):
    spec = make_spec([{"name": "copy"}], n=1, execution={"workers": 1, "cpus_per_worker": 64})
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"cpus_per_worker.*CPU 64.*largest node.*CPU 2"):
        run_sweep(spec, tmp_path / "run", progress=False)
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_workers_the_cluster_cannot_hold_are_dropped_with_a_warning(ray_session, make_spec, tmp_path, run_invariants):
    """3 one-CPU actors on a 2-CPU Ray: a warning at once, the third is dropped after start_timeout_s
    (units of 1 s keep the sweep going past it), and the sweep completes on two."""
    execution = {"workers": 3, "cpus_per_worker": 1, "batch_size": 1, "start_timeout_s": 3}
    stub = {"name": "stub", "invert": {"log": str(tmp_path / "log"), "sleep_ms": 1000}}
    spec = make_spec([stub], n=6, execution=execution)
    with pytest.warns(RuntimeWarning) as caught:
        summary = run_sweep(spec, tmp_path / "run", progress=False)
    messages = [str(w.message) for w in caught]
    assert any("asks for 3 actors but the cluster's nodes hold 2" in m for m in messages)
    assert any("could not be placed within execution.start_timeout_s=3" in m for m in messages)
    assert (summary.n_ok, summary.n_error, summary.workers_dropped) == (6, 0, 1)
    run_invariants(tmp_path / "run", _keys(spec))


@pytest.mark.slow
def test_no_actor_placed_within_the_timeout_names_the_resources(ray_session, make_spec, tmp_path):
    import ray

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.remote()
    ray.get(hog.ready.remote())
    try:
        spec = make_spec([{"name": "copy"}], n=1, execution={"workers": 1, "start_timeout_s": 2})
        with pytest.raises(RuntimeError, match=r"start_timeout_s=2.*CPU 1.*CPU 2"):
            run_sweep(spec, tmp_path / "run", progress=False)
    finally:
        ray.kill(hog)


@pytest.mark.slow
def test_a_unit_past_the_timeout_is_failed_and_the_units_behind_it_run(
    ray_session, make_spec, tmp_path, run_invariants
):
    """One actor, three units queued at it, the first never returns: the actor is killed and replaced,
    the hung unit fails (max_retries: 0), and the units queued behind it run without using an attempt."""
    hang = {"samples": ["syn-0000"]}
    execution = {"workers": 1, "batch_size": 1, "max_in_flight": 3, "max_retries": 0, "unit_timeout_s": 4}
    spec = make_spec([{"name": "runner_hang", "invert": hang}], n=4, imports=[PLUGIN, FAULTS], execution=execution)
    summary = run_sweep(spec, tmp_path / "run", progress=False)
    assert (summary.n_ok, summary.n_error, summary.worker_deaths) == (3, 1, 1)
    culprit = _keys(spec, {"syn-0000"})
    latest = run_invariants(tmp_path / "run", _keys(spec) - culprit, culprit)
    assert "unit_timeout_s=4" in latest.loc[next(iter(culprit)), "error"]


@pytest.mark.slow
def test_a_unit_that_hung_once_is_retried_on_a_fresh_actor(ray_session, make_spec, tmp_path, run_invariants):
    flag = tmp_path / "armed"
    flag.touch()
    hang = {"samples": ["syn-0001"], "flag_file": str(flag), "once": True}
    execution = {"workers": 1, "batch_size": 1, "max_retries": 1, "unit_timeout_s": 4}
    spec = make_spec([{"name": "runner_hang", "invert": hang}], n=3, imports=[PLUGIN, FAULTS], execution=execution)
    summary = run_sweep(spec, tmp_path / "run", progress=False)
    assert (summary.n_ok, summary.n_error, summary.worker_deaths) == (3, 0, 1)
    run_invariants(tmp_path / "run", _keys(spec))


@pytest.mark.slow
@pytest.mark.parametrize("error", ["OutOfMemoryError", "NodeDiedError"])
def test_an_injected_ray_out_of_memory_error_is_a_dead_worker(
    ray_session, make_spec, tmp_path, run_invariants, monkeypatch, error
):
    """Ray's memory monitor kills a worker: `ray.get` of its unit raises OutOfMemoryError (not a
    RayActorError); likewise a lost node. The driver must replace the actor and retry the unit."""
    import ray

    real_get = ray.get
    fired = []

    def get(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        rows = getattr(out, "rows", [])
        if not fired and any(r["sample_id"] == "syn-0001" for r in rows):
            fired.append(True)
            raise getattr(ray.exceptions, error)("injected: the task's worker was killed")
        return out

    monkeypatch.setattr(ray, "get", get)
    spec = make_spec([{"name": "copy"}], n=3, execution={"workers": 1, "batch_size": 1, "max_retries": 1})
    summary = run_sweep(spec, tmp_path / "run", progress=False)
    assert fired and summary.worker_deaths == 1
    assert (summary.n_ok, summary.n_error) == (3, 0)
    run_invariants(tmp_path / "run", _keys(spec))


@pytest.mark.slow
def test_ctrl_c_ends_the_driver_within_seconds_and_stores_finished_rows(
    ray_session, make_spec, spawn_driver, wait_for, tmp_path
):
    """SIGINT mid-sweep: the driver exits within seconds, with its buffered rows flushed."""
    log = tmp_path / "executions.log"
    execution = {"workers": 1, "batch_size": 1, "max_in_flight": 1, "flush_seconds": 600, "flush_rows": 10_000}
    spec = make_spec([{"name": "stub", "invert": {"log": str(log), "sleep_ms": 300}}], n=40, execution=execution)
    run_dir = tmp_path / "run"
    driver = spawn_driver(spec, run_dir)
    try:
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 5, 180, "five edits")
        executed = len(log.read_text().splitlines())
        sent = time.monotonic()
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=30)
        assert time.monotonic() - sent < 8
    finally:
        driver.kill()
    stored = RunStore(str(run_dir)).completed_task_keys()
    # Every unit the driver had received is stored: at most the one running and one in transit are not.
    assert executed - 2 <= len(stored) < 40


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, read from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry)] = (parent, cmdline)
    return out


def _kill_tree(marker: str) -> None:
    """SIGKILL every process whose command line contains `marker`, and their descendants (Ray's
    workers rename themselves `ray::...`). Never `ray stop`: it would stop every Ray on the machine."""
    procs = _processes()
    mine = {pid for pid, (_, cmd) in procs.items() if marker in cmd} - {os.getpid()}
    while True:
        children = {pid for pid, (parent, _) in procs.items() if parent in mine} - mine - {os.getpid()}
        if not children:
            break
        mine |= children
    for pid in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ray_start(command: list[str], env: dict[str, str], cwd: str | Path) -> None:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise AssertionError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@pytest.fixture
def two_node_ray():
    """A head and a second node started with `ray start` (one CPU each), the driver connected to
    the head; yields the second node's raylet pid. Replaces the session's Ray for one test."""
    import tempfile

    import ray

    was_running = ray.is_initialized()
    ray.shutdown()
    base = tempfile.mkdtemp(prefix="es2n-", dir="/tmp")  # short: Ray's socket paths live under it
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        # Declare a node dead ~1.5 s after its raylet stops answering (default: tens of seconds).
        "RAY_health_check_initial_delay_ms": "500",
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_timeout_ms": "500",
        "RAY_health_check_failure_threshold": "3",
    }
    port, second_manager_port = _free_port(), _free_port()
    common = ["--num-cpus", "1", "--num-gpus", "0", "--temp-dir", base, "--disable-usage-stats"]
    try:
        head = ["--head", "--port", str(port), "--include-dashboard=false", "--dashboard-port", str(_free_port())]
        _ray_start([ray_cli, "start", *head, *common], env, base)
        node_dir = Path(base) / "second"
        node_dir.mkdir()
        second = ["--address", f"127.0.0.1:{port}", "--node-manager-port", str(second_manager_port)]
        _ray_start([ray_cli, "start", *second, *common], env, node_dir)
        (raylet,) = [
            pid for pid, (_, cmd) in _processes().items()
            if "raylet/raylet" in cmd and f"--node_manager_port={second_manager_port}" in cmd
        ]  # fmt: skip
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield raylet
    finally:
        ray.shutdown()
        _kill_tree(base)
        if was_running:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.mark.slow
def test_a_lost_node_mid_sweep_the_sweep_completes_on_the_other(two_node_ray, make_spec, tmp_path, run_invariants):
    """Issue 10 item 7: one actor per node; the second node's raylet is killed at the 4th of 24
    edits. Its units go back to the shared queue and run on the head's actor; its replacement,
    which no live node can hold, is dropped after start_timeout_s; nothing is lost or duplicated."""
    log, pid_file = tmp_path / "executions.log", tmp_path / "raylet.pid"
    pid_file.write_text(str(two_node_ray))
    invert = {"log": str(log), "sleep_ms": 500, "kill_driver_at": 4, "driver_pid_file": str(pid_file)}
    execution = {"workers": 2, "cpus_per_worker": 1, "batch_size": 1, "max_in_flight": 2, "start_timeout_s": 5}
    spec = make_spec([{"name": "stub", "invert": invert}], n=24, execution=execution)
    with pytest.warns(RuntimeWarning, match="could not be placed"):
        summary = run_sweep(spec, tmp_path / "run", progress=False)
    assert Path(f"{log}.driver").exists()  # the raylet was killed mid-sweep
    assert (summary.n_ok, summary.n_error) == (24, 0)
    assert summary.worker_deaths >= 1 and summary.workers_dropped == 1
    run_invariants(tmp_path / "run", _keys(spec))
