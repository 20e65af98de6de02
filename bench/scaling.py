"""Scaling benchmark of the scheduler: a stub method of fixed duration on fake GPUs.

    python -m editsweep.bench.scaling [--actors 1 2 4 8] [--tasks 48] [--unit-ms 500]

Ray advertises 8 GPUs that do not exist (`ray.init(num_gpus=8)`), one actor per fake GPU. Each
unit sleeps a fixed time inside `invert`, so ideal throughput is actors / duration. Reported per
actor count: throughput after startup, scaling efficiency against one actor, and three costs per
task in milliseconds:
- `scheduler_ms_per_task`: the driver's CPU time (dispatch loop, Ray calls, writing the rows) plus
  the time actors sat idle between two consecutive units of theirs (Ray dispatch latency), both
  measured directly (`RunSummary.driver_cpu_seconds`, `dispatch_gap_seconds`);
- `worker_bookkeeping_ms_per_task`: worker time outside the stub (sample loading, PNG writes);
- `tail_ms_per_task`: actor-seconds left idle at the end because the last round is not full, a
  property of the task count, not of the scheduler (more tasks per actor shrink it).
Importing this module registers the stub method `scaling_stub`; specs name the module in `imports:`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.methods.base import register_method
from editsweep.methods.copy_input import Copy


class StubParams(Params):
    """How long each invert call sleeps."""

    unit_ms: int = Field(500, ge=0, le=60_000)


@register_method
class ScalingStub(Copy):
    """`copy` plus a fixed sleep per call: the method's cost is known exactly."""

    name = "scaling_stub"
    InvertParams = StubParams

    def invert(self, backbone, samples, params: StubParams, generators: Sequence[torch.Generator], seeds=None):  # noqa: ANN001
        time.sleep(params.unit_ms / 1000)
        return super().invert(backbone, samples, params, generators, seeds)


def measure(actors: int, tasks: int, unit_ms: int) -> dict[str, float]:
    """Run `tasks` one-task units over `actors` fake-GPU actors; return throughput and overhead."""
    from editsweep.bench.runner import run_sweep
    from editsweep.bench.spec import load_spec

    spec = load_spec(
        {
            "name": f"scaling-{actors}",
            "imports": ["editsweep.bench.scaling"],
            "datasets": [{"name": "synthetic", "params": {"n": tasks, "size": 16}}],
            "methods": [{"name": "scaling_stub", "invert": {"unit_ms": unit_ms}}],
            "metrics": {},
            "execution": {"workers": actors, "cpus_per_worker": 0.01, "batch_size": 1, "max_in_flight": 2},
        }
    )
    summary = run_sweep(spec, tempfile.mkdtemp(prefix="editsweep-scaling-"), progress=False)
    drive = summary.wall_seconds - summary.startup_seconds
    busy = sum(v for k, v in summary.seconds.items() if k != "write_rows")  # timed inside the workers
    per_task = 1000 / tasks
    worker_extra = busy - tasks * unit_ms / 1000
    scheduler = summary.driver_cpu_seconds + summary.dispatch_gap_seconds
    return dict(
        actors=actors,
        drive_seconds=round(drive, 3),
        tasks_per_second=round(tasks / drive, 3),
        scheduler_ms_per_task=round(per_task * scheduler, 2),
        driver_cpu_ms_per_task=round(per_task * summary.driver_cpu_seconds, 2),
        dispatch_gap_ms_per_task=round(per_task * summary.dispatch_gap_seconds, 2),
        worker_bookkeeping_ms_per_task=round(per_task * worker_extra, 2),
        tail_ms_per_task=round(per_task * (drive * actors - busy - summary.dispatch_gap_seconds), 2),
    )


def main(argv: list[str] | None = None) -> None:
    """Measure each actor count side by side in one Ray instance and print JSON."""
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tasks", type=int, default=48)
    parser.add_argument("--unit-ms", type=int, default=500)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_gpus=max(args.actors), include_dashboard=False, log_to_driver=False)
    rows = [measure(n, args.tasks, args.unit_ms) for n in args.actors]
    base = rows[0]["tasks_per_second"] / rows[0]["actors"]
    for row in rows:
        row["scaling_efficiency"] = round(row["tasks_per_second"] / (base * row["actors"]), 3)
    print(json.dumps(dict(tasks=args.tasks, unit_ms=args.unit_ms, results=rows), indent=2))


if __name__ == "__main__":
    main()
