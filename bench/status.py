"""`editsweep status`: what a run directory holds, from the store and its newest manifest only."""

from __future__ import annotations

from collections import Counter
from typing import Any

from editsweep.bench.plan import expand
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore


def run_status(run_dir: str, top_errors: int = 5) -> dict[str, Any]:
    """Done, failed (with the most frequent error messages) and remaining tasks, per method."""
    store = RunStore(run_dir)
    manifest = store.latest_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{run_dir} has no run manifest: is it a directory written by `editsweep run`?")
    spec = load_spec(manifest["spec"])
    planned = {t.task_key: t.method for t in expand(spec)}
    results = store.read_results()
    status = dict(zip(results["task_key"], results["status"]))
    per_method: dict[str, Counter] = {}
    for key, method in planned.items():
        per_method.setdefault(method, Counter())[
            {"ok": "done", "error": "failed"}.get(status.get(key), "remaining")
        ] += 1
    errors = results.loc[results["status"] == "error", "error"].fillna("").map(lambda e: e.splitlines()[0] if e else "")
    return dict(
        run_dir=store.uri,
        spec=spec.name,
        last_run=manifest["run_id"],
        finished=manifest.get("finished_at") is not None,
        tasks=len(planned),
        per_method={m: dict(c) for m, c in per_method.items()},
        top_errors=errors.value_counts().head(top_errors).to_dict(),
        workers=(manifest.get("summary") or {}).get("workers", []),
    )


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
    for method, counts in status["per_method"].items():
        lines.append(
            f"  {method}: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, {counts.get('remaining', 0)} remaining"
        )
    if status["top_errors"]:
        lines.append("most frequent errors:")
        lines += [f"  {n} x {message}" for message, n in status["top_errors"].items()]
    for w in status["workers"]:
        if w.get("tasks_per_busy_second"):
            lines.append(
                f"  worker {w['worker']} ({w['device']}): {w['tasks']} tasks, {w['tasks_per_busy_second']} tasks/s busy"
            )
    return "\n".join(lines)
