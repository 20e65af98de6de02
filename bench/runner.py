"""Run a sweep on Ray: plan, hand units to worker actors as they free up, survive dead workers.

The driver keeps a bounded number of units queued at each actor (`max_in_flight`) and gives the
next pending unit to whichever actor finishes one (pull, not a fixed split), largest units first.
Workers write the images and return their rows; the driver writes rows in batches (`RowBuffer`:
every `flush_seconds` or `flush_rows`, and on every way out; one writer for the results table),
merges the small files every so many writes, and all of a partition's files into one at the end.
One driver per run directory: `run_sweep` holds the run lock (`bench/lock.py`) throughout, writes
a marker every worker checks (`bench/rundir.py`), and passes the object store's environment on. When an actor dies, its unit goes back to the queue and the actor is replaced by a
fresh one (models reloaded); a unit that has killed `max_retries + 1` workers becomes error rows.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

# Under `uv run`, Ray by default starts every worker through `uv run` in a fresh copy of the
# working directory, re-creating the virtual environment there (~1 min per run here). Workers on this
# machine share the driver's environment, and cluster images install editsweep themselves, so the
# hook is off unless the user turns it on. Ray reads the flag when it is first imported.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import ray  # noqa: E402
from tqdm import tqdm  # noqa: E402

from editsweep.bench.lock import RunLock
from editsweep.bench.manifest import RunManifest, planned_counts
from editsweep.bench.plan import Task, Unit, plan
from editsweep.bench.rundir import check_run_dir, resolve_run_dir, store_env, write_marker
from editsweep.bench.spec import SweepSpec
from editsweep.bench.store import RowBuffer, RunStore
from editsweep.bench.worker import SweepWorker, UnitReport, task_row

PACKAGES = (
    "editsweep", "torch", "diffusers", "transformers", "open-clip-torch", "lpips", "torchmetrics",
    "ray", "pyarrow", "pandas", "pydantic", "mlflow", "numpy",
)  # fmt: skip


@dataclass
class RunSummary:
    """What a sweep did: task counts, where the time went, and the run's identity."""

    run_id: str
    run_dir: str
    n_tasks: int
    n_skipped: int
    n_ok: int = 0
    n_error: int = 0
    invert_calls: int = 0
    edit_calls: int = 0
    oom_retries: int = 0
    backbone_loads: int = 0  # loads after the workers' first: locality keeps this near the backbone count
    worker_deaths: int = 0
    dispatch_gap_seconds: float = 0.0  # actors idle between two consecutive units of theirs
    driver_cpu_seconds: float = 0.0  # the driver's CPU time while dispatching and writing rows
    files_compacted: int = 0  # small Parquet files merged at the end of the run
    wall_seconds: float = 0.0
    startup_seconds: float = 0.0
    seconds: Counter = field(default_factory=Counter)
    workers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in the run's manifest."""
        out = dict(self.__dict__)
        out["seconds"] = dict(self.seconds)
        return out


def run_sweep(
    spec: SweepSpec,
    run_dir: str | os.PathLike,
    address: str | None = None,
    progress: bool = True,
    break_lock: bool = False,
) -> RunSummary:
    """Run every task of `spec` not yet stored as ok in `run_dir`; returns what happened.

    `run_dir` is made absolute (or kept as a URI) and checked before anything starts; the run holds
    the directory's lock (`bench/lock.py`) throughout, and `break_lock` takes over a stale one.
    """
    started = time.perf_counter()
    uri = resolve_run_dir(run_dir)
    check_run_dir(uri, create=True)
    store = RunStore(uri)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    with RunLock(store, run_id).acquire(break_stale=break_lock) as lock:
        return _run_locked(spec, store, run_id, lock, address, progress, started)


def _run_locked(
    spec: SweepSpec, store: RunStore, run_id: str, lock: RunLock, address: str | None, progress: bool, started: float
) -> RunSummary:
    """`run_sweep` under the run lock. An unreadable result file is quarantined and its tasks run again."""
    write_marker(store, run_id)
    quarantined_before = {n["file"] for n in store.quarantined()}
    tasks, units = plan(spec, store.completed_task_keys(quarantine=True, run_id=run_id))
    pending = sum(len(u.tasks) for u in units)
    summary = RunSummary(run_id=run_id, run_dir=store.uri, n_tasks=len(tasks), n_skipped=len(tasks) - pending)
    manifest = _manifest(spec, run_id, summary, tasks)
    manifest.quarantined = sorted({n["file"] for n in store.quarantined()} - quarantined_before)
    store.write_manifest(manifest)
    if units:
        env = store_env(store.uri)
        _ensure_ray(address, env)
        worker_options = _worker_options(spec)
        if env:  # also for a Ray started before this driver, whose job-level runtime_env is not ours
            worker_options = {**worker_options, "runtime_env": {"env_vars": env}}
        spec_payload = spec.model_dump(mode="json")
        n_workers = min(len(units), _n_workers(spec, worker_options))
        backbones = [(b.name, b.dtype) for b in spec.backbones]
        pool = _Pool(spec_payload, store.uri, run_id, worker_options, n_workers, backbones)
        summary.startup_seconds = time.perf_counter() - started
        summary.workers = pool.infos
        bar = tqdm(total=pending, desc=f"sweep {spec.name}", unit="edit", disable=not progress, file=sys.stderr)
        cpu = time.process_time()
        rows = RowBuffer(
            store, spec.execution.flush_rows, spec.execution.flush_seconds, run_id=run_id, may_compact=lock.held
        )
        try:
            _drive(pool, units, spec, store, rows, summary, bar)
        finally:
            t0 = time.perf_counter()
            rows.flush()  # on every way out (errors, Ctrl-C): finished units are never dropped
            summary.seconds["write_rows"] += time.perf_counter() - t0
            summary.driver_cpu_seconds = time.process_time() - cpu
            bar.close()
            pool.shutdown()
        if lock.held():  # compaction only under the lock
            summary.files_compacted = rows.files_compacted + store.compact(run_id=run_id)
    summary.wall_seconds = time.perf_counter() - started
    manifest.finished_at = datetime.now(timezone.utc).isoformat()
    manifest.summary = summary.as_dict()
    store.write_manifest(manifest)
    return summary


class _Pool:
    """The worker actors, replaced one by one when they die."""

    def __init__(
        self, spec: dict, run_uri: str, run_id: str, options: dict, size: int, backbones: list[tuple[str, str]]
    ) -> None:
        self._args = (spec, run_uri, run_id)
        self._cls = ray.remote(SweepWorker).options(max_restarts=0, max_task_retries=0, **options)
        self.backbones = backbones
        # Actors start on the backbones in turn; `holds` follows what each one has loaded.
        self.holds = [backbones[slot % len(backbones)] for slot in range(size)]
        self.actors = [self._cls.remote(*self._args, slot % len(backbones)) for slot in range(size)]
        try:
            self.infos: list[dict[str, Any]] = ray.get([a.info.remote() for a in self.actors])
        except ray.exceptions.RayActorError as err:
            self.shutdown()
            raise RuntimeError(
                f"a worker failed to start (loading the backbone, scorers or datasets):\n{err}"
            ) from None
        self.replacements = 0

    def replace(self, slot: int) -> None:
        """Kill the dead or broken actor in `slot` and start a fresh one in its place."""
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._cls.remote(*self._args, self.backbones.index(self.holds[slot]))
        self.replacements += 1

    def shutdown(self) -> None:
        """Stop every actor."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def _drive(
    pool: _Pool, units: list[Unit], spec: SweepSpec, store: RunStore, rows: RowBuffer, summary: RunSummary, bar: tqdm
) -> None:
    """Pull loop: keep `max_in_flight` units queued per actor; on a death, retry what it held.

    Locality: an actor gets units of the backbone it holds; only when none is left does it take
    the backbone with the most pending work (and load it once). A dead actor takes down the unit
    it was running and the units queued behind it. Only the running one (its oldest) counts as an
    attempt, so a unit that kills workers cannot use up the retries of the units queued next to it.
    """
    queues: dict[tuple[str, str], deque[Unit]] = {key: deque() for key in pool.backbones}
    for unit in units:
        queues[unit.backbone].append(unit)
    attempts: Counter = Counter()
    in_flight: dict[Any, tuple[Unit, int, Any]] = {}  # ref -> (unit, actor slot, actor)
    queued: dict[Any, list[Any]] = {}  # actor -> its refs in submission (= execution) order
    running_when_died: dict[Any, Any] = {}  # dead actor -> the ref it was executing
    throughput = [Counter() for _ in pool.actors]  # per actor slot: units, tasks, busy seconds
    last_finished: list[float | None] = [None] * len(pool.actors)  # per slot: when its last unit ended

    def flush_rows() -> None:
        t0 = time.perf_counter()
        rows.flush()
        summary.seconds["write_rows"] += time.perf_counter() - t0

    def submit(slot: int) -> None:
        if not queues[pool.holds[slot]]:
            busiest = max(queues, key=lambda key: sum(len(u.tasks) for u in queues[key]))
            if not queues[busiest]:
                return
            pool.holds[slot] = busiest
        unit, actor = queues[pool.holds[slot]].popleft(), pool.actors[slot]
        ref = actor.process.remote(unit)
        in_flight[ref] = (unit, slot, actor)
        queued.setdefault(actor, []).append(ref)

    for _ in range(spec.execution.max_in_flight):
        for slot in range(len(pool.actors)):
            submit(slot)
    while in_flight:
        done, _ = ray.wait(list(in_flight), num_returns=1, timeout=rows.seconds_left())
        if not done:  # the buffered rows came due while every actor was busy
            flush_rows()
            continue
        (ref,) = done
        unit, slot, actor = in_flight.pop(ref)
        try:
            report: UnitReport = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            if actor not in running_when_died:
                running_when_died[actor] = queued[actor][0]
                summary.worker_deaths += 1
                if pool.replacements >= spec.execution.max_restarts * len(pool.actors):
                    raise RuntimeError(
                        f"workers died {pool.replacements} times (execution.max_restarts="
                        f"{spec.execution.max_restarts} per worker); stopping. Finished rows are stored in "
                        f"{store.uri}; last error: {_first_line(err)}"
                    ) from err
                pool.replace(slot)
                last_finished[slot] = None
            if ref == running_when_died[actor]:
                attempts[id(unit)] += 1
            if attempts[id(unit)] <= spec.execution.max_retries:
                queues[unit.backbone].appendleft(unit)
            else:
                message = f"the worker died {attempts[id(unit)]} times on this unit; last error: {_first_line(err)}"
                rows.add(task_row(t, status="error", error=message, run_id=summary.run_id) for t in unit.tasks)
                summary.n_error += len(unit.tasks)
                bar.update(len(unit.tasks))
            submit(slot)
            continue
        queued[actor].remove(ref)
        rows.add(report.rows)
        if rows.due():
            flush_rows()
        if last_finished[slot] is not None:
            summary.dispatch_gap_seconds += max(0.0, report.started_at - last_finished[slot])
        last_finished[slot] = report.finished_at
        summary.n_ok += report.n_ok
        summary.n_error += report.n_error
        summary.invert_calls += report.invert_calls
        summary.edit_calls += report.edit_calls
        summary.oom_retries += report.oom_retries
        summary.backbone_loads += report.backbone_loads
        summary.seconds.update(report.seconds)
        throughput[slot].update(units=1, tasks=report.n_ok + report.n_error, busy_seconds=sum(report.seconds.values()))
        bar.update(report.n_ok + report.n_error)
        bar.set_postfix(ok=summary.n_ok, error=summary.n_error, in_flight=len(in_flight), refresh=False)
        submit(slot)
    for info, counts in zip(summary.workers, throughput):
        busy = counts["busy_seconds"]
        info.update(units=counts["units"], tasks=counts["tasks"], busy_seconds=round(busy, 3))
        info["tasks_per_busy_second"] = round(counts["tasks"] / busy, 3) if busy else None


def _ensure_ray(address: str | None, env: dict[str, str] | None = None) -> None:
    """Connect to (or start) Ray; `env` (`rundir.store_env`) reaches every worker of this job."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": env} if env else None
    if address is None:
        # A local instance for this run only: no token under ~/.ray, no dashboard process.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(include_dashboard=False, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(address=address, runtime_env=runtime_env)


def _worker_options(spec: SweepSpec) -> dict[str, Any]:
    gpus = ray.cluster_resources().get("GPU", 0)
    if spec.device != "cpu" and gpus >= 1:
        return dict(num_gpus=spec.execution.gpus_per_worker, num_cpus=spec.execution.cpus_per_worker)
    if spec.device == "cuda":
        raise RuntimeError("backbone.device is 'cuda' but the Ray cluster has no GPU; use 'auto' or 'cpu'")
    return dict(num_cpus=spec.execution.cpus_per_worker)


def _n_workers(spec: SweepSpec, options: dict[str, Any]) -> int:
    if spec.execution.workers != "auto":
        return int(spec.execution.workers)
    if "num_gpus" in options:
        return max(1, int(ray.cluster_resources().get("GPU", 1) / options["num_gpus"]))
    return 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _manifest(spec: SweepSpec, run_id: str, summary: RunSummary, tasks: list[Task]) -> RunManifest:
    """Everything needed to reproduce the run (spec, code version, packages, machine), and the
    planned task counts `editsweep status` reads instead of re-planning."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return RunManifest(
        run_id=run_id,
        started_at=datetime.now(timezone.utc).isoformat(),
        spec=spec.model_dump(mode="json"),
        git_commit=_git_commit(),
        versions=versions,
        python=sys.version,
        platform=platform.platform(),
        host=socket.gethostname(),
        devices=_devices(),
        n_tasks=summary.n_tasks,
        n_skipped=summary.n_skipped,
        planned=planned_counts((t.method, t.dataset) for t in tasks),
    )


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _devices() -> dict[str, Any]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return dict(driver_cuda=gpus, driver_cpus=os.cpu_count())
