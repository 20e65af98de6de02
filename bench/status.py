"""`editsweep status`: what a run directory holds, from the store and its newest manifest only.

The manifest (`bench/manifest.py`) records the planned task count per method and dataset; done and
failed counts come from the store's rows. So status needs neither the datasets nor the plugins
of the spec (manifests written before the counts were recorded are re-planned, which does).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from editsweep.bench.lock import read_lock
from editsweep.bench.manifest import PlannedCount, RunManifest, planned_counts
from editsweep.bench.store import RunStore


def run_status(run_dir: str, top_errors: int = 5) -> dict[str, Any]:
    """Done, failed (with the most frequent error messages) and remaining tasks, per method.

    A task counts as done when the store has an ok row for its method and dataset; rows of tasks
    an earlier spec planned in the same directory count too, capped at the planned number.
    """
    store = RunStore(run_dir)
    manifest = store.latest_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{run_dir} has no run manifest: is it a directory written by `editsweep run`?")
    planned = manifest.planned if manifest.planned is not None else _replan(manifest, store)
    results = store.read_results(columns=["task_key", "method", "dataset", "status", "error"])
    stored = Counter(zip(results["method"], results["dataset"], results["status"]))
    per_method: dict[str, Counter] = {}
    for p in planned:
        done = min(stored[(p.method, p.dataset, "ok")], p.tasks)
        failed = min(stored[(p.method, p.dataset, "error")], p.tasks - done)
        counts = per_method.setdefault(p.method, Counter())
        counts.update(done=done, failed=failed, remaining=p.tasks - done - failed)
    errors = results.loc[results["status"] == "error", "error"].fillna("").map(lambda e: e.splitlines()[0] if e else "")
    return dict(
        run_dir=store.uri,
        spec=manifest.spec_name,
        last_run=manifest.run_id,
        finished=manifest.finished_at is not None,
        tasks=sum(p.tasks for p in planned),
        per_method={m: {k: n for k, n in c.items() if n} for m, c in per_method.items()},
        top_errors=errors.value_counts().head(top_errors).to_dict(),
        workers=(manifest.summary or {}).get("workers", []),
        quarantined=store.quarantined(),
        lock=read_lock(store),
    )


def _replan(manifest: RunManifest, store: RunStore) -> list[PlannedCount]:
    """Planned counts of a manifest that predates them: needs the spec's datasets and plugins."""
    from editsweep.bench.plan import expand
    from editsweep.bench.spec import load_spec

    try:
        tasks = expand(load_spec(manifest.spec))
    except Exception as err:  # noqa: BLE001 - any failure to re-plan becomes one message naming the manifest
        raise ValueError(
            f"the manifest of run {manifest.run_id} in {store.uri} predates recorded task counts, and re-planning "
            f"its spec failed (status then needs the spec's datasets and plugins): {err}"
        ) from err
    return planned_counts((t.method, t.dataset) for t in tasks)


def format_status(status: dict[str, Any]) -> str:
    """A short human summary of `run_status`."""
    totals = Counter()
    for counts in status["per_method"].values():
        totals.update(counts)
    lines = [
        f"{status['spec']} in {status['run_dir']}: {status['tasks']} tasks, {totals['done']} done, "
        f"{totals['failed']} failed, {totals['remaining']} remaining"
        f" (last run {status['last_run']}{'' if status['finished'] else ', did not finish'})",
    ]
    lock = status.get("lock")
    if lock:
        lines.append(
            f"locked by run {lock.get('run_id')} on {lock.get('host')} (pid {lock.get('pid')}), "
            f"lease refreshed {lock.get('refreshed_at')}"
        )
    for method, counts in status["per_method"].items():
        lines.append(
            f"  {method}: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, {counts.get('remaining', 0)} remaining"
        )
    if status["top_errors"]:
        lines.append("most frequent errors:")
        lines += [f"  {n} x {message}" for message, n in status["top_errors"].items()]
    if status.get("quarantined"):
        lines.append(
            f"quarantined: {len(status['quarantined'])} unreadable result files moved to quarantine/ "
            "(their tasks run again on the next run):"
        )
        lines += [
            f"  {note['file']} ({note.get('quarantined_at')}): {str(note.get('reason')).splitlines()[0]}"
            for note in status["quarantined"]
        ]
    for w in status["workers"]:
        if w.get("tasks_per_busy_second"):
            lines.append(
                f"  worker {w['worker']} ({w['device']}): {w['tasks']} tasks, {w['tasks_per_busy_second']} tasks/s busy"
            )
    return "\n".join(lines)
