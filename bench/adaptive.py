"""Adaptive target searches (issue 14): the value of one parameter that reaches a target metric.

A method entry with `search:` (bench/spec.py `SearchSpec`) asks for the value of a numeric
parameter whose mean metric over the entry's rows (all samples, seeds, datasets, backbones) is
within `tolerance` of `target`. The driver runs rounds: round 0 runs `low` and `high` with the
rest of the spec, each later round one more value chosen from the rows stored so far. A round is
an ordinary sweep (`round_spec`: the searched parameter becomes a grid axis of the values so far)
run by `bench/runner.py` `run_sweep`, so its rows are ordinary rows in the same store and resume
as any others: a re-run replays the finished rounds (their tasks are already done) and goes on.

The next value (`decide`) depends only on the stored point means (summed with `math.fsum`, so
the order rows are read in does not matter) and is rounded to `decimals`, so that the same rows
always give the same value and the same task keys.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from editsweep.bench.plan import expand
from editsweep.bench.rundir import resolve_run_dir
from editsweep.bench.spec import SearchSpec, SweepSpec
from editsweep.bench.store import RunStore
from editsweep.methods.base import get_method_class

SEARCH_FILE = "search.json"
MIN_STEP = 0.1  # an interpolated value stays this fraction of the bracket away from its ends


@dataclass(frozen=True)
class Point:
    """One searched value and its mean metric over its ok rows with a finite score (None: none)."""

    value: float
    mean: float | None
    n: int


@dataclass(frozen=True)
class Decision:
    """What to do after a round: run `next_value`, or stop (`status` says why) with the best point."""

    status: str  # running, reached, max_rounds, not_reachable, not_monotone, resolution, no_rows
    message: str
    next_value: float | None = None
    best: Point | None = None
    distance: float | None = None  # of the best point's mean from the target


def decide(search: SearchSpec, points: Sequence[Point], integer: bool = False) -> Decision:
    """The next value to run, or why the search stops, from the points run so far (round order).

    Round 0 gives two points (low, high); every later round one. Checks, in order: a point within
    tolerance (reached), means not monotone in the value (not_monotone), the target outside the
    endpoints' means (not_reachable), `max_rounds` rounds done (max_rounds); otherwise the next
    value lies in the bracket of adjacent values whose means straddle the target: its midpoint
    (`bisect`) or the linear interpolation (`interpolate`, regula falsi) kept `MIN_STEP` of the
    bracket away from its ends, rounded to `decimals` (to an integer for an integer parameter).
    A rounded value that is not strictly inside the bracket stops the search (resolution).
    """
    name = search.param
    missing = [p.value for p in points if p.mean is None]
    if missing:
        return Decision("no_rows", f"no ok rows with a finite {search.metric} at {name} = {missing}")
    best = min(points, key=lambda p: (abs(p.mean - search.target), p.value))
    distance = abs(best.mean - search.target)
    rounds = len(points) - 1
    found = f"best {name} = {best.value:g}: mean {search.metric} {best.mean:.4g}, {distance:.4g} from {search.target:g}"
    if distance <= search.tolerance:
        message = f"reached: {found} (tolerance {search.tolerance:g}) in {rounds} rounds"
        return Decision("reached", message, best=best, distance=distance)
    ordered = sorted(points, key=lambda p: p.value)
    means = [p.mean for p in ordered]
    steps = [b - a for a, b in zip(means, means[1:])]
    if not (all(s >= 0 for s in steps) or all(s <= 0 for s in steps)):
        seen = ", ".join(f"{p.value:g}: {p.mean:.4g}" for p in ordered)
        message = f"not monotone: mean {search.metric} by {name}: {seen}"
        return Decision("not_monotone", message, best=best, distance=distance)
    if not min(means) <= search.target <= max(means):
        message = (
            f"not reachable in [{search.low:g}, {search.high:g}]: mean {search.metric} spans "
            f"[{min(means):.4g}, {max(means):.4g}], target {search.target:g}; {found}"
        )
        return Decision("not_reachable", message, best=best, distance=distance)
    if rounds >= search.max_rounds:
        message = f"max_rounds ({search.max_rounds}) reached: {found}"
        return Decision("max_rounds", message, best=best, distance=distance)
    lo, hi = next(
        (a, b) for a, b in zip(ordered, ordered[1:]) if (a.mean - search.target) * (b.mean - search.target) < 0
    )
    width = hi.value - lo.value
    if search.method == "bisect":
        value = lo.value + width / 2
    else:
        value = lo.value + width * min(max(_fraction(search.target, lo, hi, points), MIN_STEP), 1 - MIN_STEP)
    value = float(round(value)) if integer else round(value, search.decimals)
    if not lo.value < value < hi.value:
        message = f"resolution: no value between {lo.value:g} and {hi.value:g} at decimals={search.decimals}; {found}"
        return Decision("resolution", message, best=best, distance=distance)
    return Decision("running", f"next {name} = {value:g} in [{lo.value:g}, {hi.value:g}]", value, best, distance)


def _fraction(target: float, lo: Point, hi: Point, points: Sequence[Point]) -> float:
    """Where the target falls between `lo` and `hi` by linear interpolation, Illinois style.

    Plain regula falsi stalls on a curved metric: one end of the bracket stays for round after
    round. When the last k >= 2 values added all fell on the same side of the target, the end kept
    all that time counts with its distance to the target halved k - 1 times.
    """
    side = [p.mean > target for p in points[2:]]
    kept = next((k for k in range(len(side), 0, -1) if len(set(side[-k:])) == 1), 0)
    weight = 0.5 ** max(kept - 1, 0)
    d_lo, d_hi = lo.mean - target, hi.mean - target
    if side and (lo.mean > target) != side[-1]:
        d_lo *= weight
    elif side:
        d_hi *= weight
    return d_lo / (d_lo - d_hi)


def is_integer(spec: SweepSpec, index: int) -> bool:
    """Whether the parameter searched by method entry `index` is an integer one."""
    entry = spec.methods[index]
    cls = get_method_class(entry.name)
    model = cls.InvertParams if entry.search.kind == "invert" else cls.EditParams
    return model.model_fields[entry.search.key].annotation is int


def _as_param(value: float, integer: bool) -> float | int:
    return int(value) if integer else value


def round_spec(spec: SweepSpec, values: dict[int, list[float]]) -> SweepSpec:
    """The ordinary spec of a round: each searched parameter a grid axis of `values[entry]`, no searches."""
    raw = spec.model_dump(mode="json")
    for i, search in spec.searches.items():
        entry = raw["methods"][i]
        entry["search"] = None
        entry[search.kind] = {**entry[search.kind], search.key: [_as_param(v, is_integer(spec, i)) for v in values[i]]}
    return SweepSpec.model_validate(raw)


def point_task_keys(spec: SweepSpec, index: int, value: float) -> set[str]:
    """The task keys of method entry `index` with its searched parameter at `value`."""
    search = spec.methods[index].search
    raw = spec.model_dump(mode="json")
    entry = raw["methods"][index]
    entry["search"] = None
    entry[search.kind] = {**entry[search.kind], search.key: _as_param(value, is_integer(spec, index))}
    return {t.task_key for t in expand(SweepSpec.model_validate({**raw, "methods": [entry]}))}


def read_points(store: RunStore, spec: SweepSpec, values: dict[int, list[float]]) -> dict[int, list[Point]]:
    """Per searched entry, its values (in round order) with the mean metric of their stored ok rows."""
    rows = store.read_results(columns=["task_key", "status", "scores"])
    ok = rows[rows["status"] == "ok"] if not rows.empty else rows
    scores = dict(zip(ok["task_key"], ok["scores"]))
    points: dict[int, list[Point]] = {}
    for i, search in spec.searches.items():
        points[i] = []
        for value in values[i]:
            found = [
                s[search.metric]
                for key in point_task_keys(spec, i, value)
                if (s := dict(scores.get(key) or {})) and search.metric in s and math.isfinite(s[search.metric])
            ]
            mean = math.fsum(found) / len(found) if found else None
            points[i].append(Point(value, mean, len(found)))
    return points


@dataclass
class AdaptiveResult:
    """What an adaptive run did: one run summary per round and, per search, its record (search.json)."""

    summaries: list[Any]
    searches: list[dict[str, Any]]


def search_record(spec: SweepSpec, index: int, points: list[Point], decision: Decision) -> dict[str, Any]:
    """The JSON record of one search: its settings, every round's value and mean, and the outcome."""
    search = spec.methods[index].search
    return {
        "entry": index,
        "method": spec.methods[index].name,
        "search": search.model_dump(mode="json"),
        "rounds": [{"round": max(0, k - 1), **asdict(p)} for k, p in enumerate(points)],
        "outcome": {
            "status": decision.status,
            "message": decision.message,
            "value": decision.best.value if decision.best else None,
            "mean": decision.best.mean if decision.best else None,
            "distance": decision.distance,
        },
    }


def run_adaptive(
    spec: SweepSpec,
    run_dir: str | os.PathLike,
    run_round: Callable[[SweepSpec], Any] | None = None,
    address: str | None = None,
    progress: bool = True,
    break_lock: bool = False,
) -> AdaptiveResult:
    """Run `spec`'s searches round by round until each stops; writes `search.json` after every round.

    `run_round` runs one round's ordinary spec (default: `run_sweep` into `run_dir`); finished
    rounds of an earlier run of the same spec are replayed from the store without recomputing.
    """
    uri = resolve_run_dir(run_dir)
    if run_round is None:
        from editsweep.bench.runner import run_sweep

        def run_round(s: SweepSpec) -> Any:
            return run_sweep(s, uri, address=address, progress=progress, break_lock=break_lock)

    store = RunStore(uri)
    searches = spec.searches
    integer = {i: is_integer(spec, i) for i in searches}
    values = {i: [float(s.low), float(s.high)] for i, s in searches.items()}
    decisions: dict[int, Decision] = {}
    summaries = []
    while True:
        summaries.append(run_round(round_spec(spec, values)))
        points = read_points(store, spec, values)
        running = [i for i in searches if i not in decisions or decisions[i].next_value is not None]
        for i in running:
            decisions[i] = decide(searches[i], points[i], integer[i])
        records = [search_record(spec, i, points[i], decisions[i]) for i in searches]
        store.write_json(SEARCH_FILE, {"spec": spec.name, "searches": records})
        if all(d.next_value is None for d in decisions.values()):
            return AdaptiveResult(summaries, records)
        for i in running:
            if decisions[i].next_value is not None:
                values[i].append(decisions[i].next_value)


__all__ = ["AdaptiveResult", "Decision", "Point", "decide", "read_points", "round_spec", "run_adaptive"]
