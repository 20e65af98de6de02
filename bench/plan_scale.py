"""Benchmark of planning at scale (issue 10, item 13): wall time and memory of `plan(spec)`.

Builds a spec with the synthetic dataset (`--samples` ids: listing ids renders no image) and an
edit grid sized so that the sweep reaches `--tasks` tasks (default 10**6: 10,000 samples x
10 seeds x 10 edit points of `ddim_edit`), then plans it once and prints the wall time, the peak
of Python allocations during planning (tracemalloc) and the growth of the process's peak RSS
(resource.getrusage) beyond what the imports and the spec took.

    uv run python -m editsweep.bench.plan_scale [--tasks 1000000] [--samples 10000] [--no-tracemalloc]

tracemalloc slows allocation-heavy code down by ~2x, so the wall time is measured in a first pass
without it and the allocation peak in a second pass.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import tracemalloc


def build_spec(n_tasks: int, n_samples: int):
    """A validated spec of about `n_tasks` tasks: samples x seeds x edit points (one inversion point)."""
    from editsweep.bench.spec import load_spec

    per_sample = max(1, n_tasks // n_samples)
    seeds = 10 if per_sample % 10 == 0 else 1
    points = per_sample // seeds
    return load_spec(
        {
            "name": "plan-scale",
            "datasets": [{"name": "synthetic", "params": {"n": n_samples}}],
            "seeds": list(range(seeds)),
            "methods": [{"name": "ddim_edit", "invert": {"steps": 10}, "edit": {"guidance": [1.0 + i for i in range(points)]}}],
            "metrics": {"psnr": {}},
        }
    )


def _peak_rss_mib() -> float:
    """The process's peak resident set size so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    """Plan the sweep and print tasks, units, seconds, peak RSS growth and peak traced allocations."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10**6)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the second, traced pass")
    args = parser.parse_args(argv)

    from editsweep.bench.plan import plan

    spec = build_spec(args.tasks, args.samples)
    gc.collect()
    rss_before = _peak_rss_mib()
    t0 = time.perf_counter()
    tasks, units = plan(spec)
    seconds = time.perf_counter() - t0
    rss_growth = _peak_rss_mib() - rss_before
    n_tasks, n_units = len(tasks), len(units)
    keys = {t.task_key for t in tasks[:1000]} | {t.task_key for t in tasks[-1000:]}  # keys read back: no recomputation
    del tasks, units, keys
    gc.collect()
    line = f"plan: {n_tasks} tasks in {n_units} units: {seconds:.2f} s, peak RSS +{rss_growth:.0f} MiB"
    if not args.no_tracemalloc:
        tracemalloc.start()
        tasks, units = plan(spec)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        line += f", peak traced allocations {peak / 2**20:.0f} MiB"
        del tasks, units
    print(line, f"(python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
