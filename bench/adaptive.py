"""Adaptive searches (issue 14): parameter values chosen from the rows already stored.

A method entry with `search:` (bench/spec.py `SearchSpec`) asks either for the value of a numeric
parameter whose mean metric over the entry's rows (all samples, seeds, datasets, backbones) is
within `tolerance` of `target` (a target search, `decide_target`), or for `points` values spread
evenly along the entry's trade-off curve of two metrics (a spread search, `decide_spread`). The
driver runs rounds: round 0 runs the initial values (`initial_values`) with the rest of the spec,
each later round the values chosen from the rows stored so far. A round is an ordinary sweep
(`round_spec`: the searched parameter becomes a grid axis of the values so far) run by
`bench/runner.py` `run_sweep`, so its rows are ordinary rows in the same store and resume as any
others: a re-run replays the finished rounds (their tasks are already done) and goes on.

The next values depend only on the stored point means (summed with `math.fsum`, so the order rows
are read in does not matter) and are rounded to `decimals`, so that the same rows always give the
same values and the same task keys.
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
from editsweep.core.params import numeric_type
from editsweep.methods.base import get_method_class

SEARCH_FILE = "search.json"
MIN_STEP = 0.1  # an interpolated value stays this fraction of the bracket away from its ends


@dataclass(frozen=True)
class Point:
    """One searched value and its mean metric over its ok rows with a finite score (None: none);
    for a spread search also the mean of the curve's second metric (`along`)."""

    value: float
    mean: float | None
    n: int
    along: float | None = None


@dataclass(frozen=True)
class Decision:
    """What to do after a round: run `next_values`, or stop (`status` says why) with the best point
    (target search) or the chosen points (spread search)."""

    status: str  # running, reached, max_rounds, not_reachable, not_monotone, resolution, no_rows
    message: str
    next_values: tuple[float, ...] = ()
    best: Point | None = None
    distance: float | None = None  # target: the best mean's distance from it; spread: the worst position's
    chosen: tuple[Point, ...] = ()

    @property
    def next_value(self) -> float | None:
        """The one next value of a target search (None when the search stops)."""
        return self.next_values[0] if self.next_values else None


def initial_values(search: SearchSpec, integer: bool = False) -> list[float]:
    """Round 0's values: low and high (target search), or `points` values evenly spaced in [low, high]."""
    if not search.spread:
        return [float(search.low), float(search.high)]
    step = (search.high - search.low) / (search.points - 1)
    values = [search.low + k * step for k in range(search.points)]
    return list(dict.fromkeys(float(round(v)) if integer else round(v, search.decimals) for v in values))


def decide(search: SearchSpec, points: Sequence[Point], integer: bool = False, rounds: int | None = None) -> Decision:
    """What to do after `rounds` rounds, round 0 included (a target search counts them from its points)."""
    if search.spread:
        return decide_spread(search, points, rounds if rounds is not None else 1, integer)
    return decide_target(search, points, integer)


def decide_target(search: SearchSpec, points: Sequence[Point], integer: bool = False) -> Decision:
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
    return Decision("running", f"next {name} = {value:g} in [{lo.value:g}, {hi.value:g}]", (value,), best, distance)


def decide_spread(search: SearchSpec, points: Sequence[Point], rounds: int, integer: bool = False) -> Decision:
    """The values to run next, after `rounds` rounds (round 0 included), so that `search.points`
    points lie evenly along the trade-off curve.

    The curve joins the points' (mean metric, mean along) in the order of the parameter's value,
    each metric scaled by its range over the points so that neither dominates the length. Its
    length L gives goals at k L / (points - 1); the endpoints (low, high) hold the first and last,
    and each inner goal is met by the nearest point within `tolerance` of the spacing
    L / (points - 1). For each goal not met, the next value is the parameter interpolated linearly
    at the goal's arc length on the segment holding it. Stops, in order: no rows, `metric` not
    monotone in the value (the curve doubles back in fidelity: not_monotone), every goal met
    (reached), `max_rounds` rounds done, no new rounded value left (resolution).
    """
    name = search.param
    missing = [p.value for p in points if p.mean is None or p.along is None]
    if missing:
        return Decision("no_rows", f"no ok rows with finite {search.metric} and {search.along} at {name} = {missing}")
    ordered = sorted(points, key=lambda p: p.value)
    means = [p.mean for p in ordered]
    steps = [b - a for a, b in zip(means, means[1:])]
    if not (all(d >= 0 for d in steps) or all(d <= 0 for d in steps)):
        seen = ", ".join(f"{p.value:g}: {p.mean:.4g}" for p in ordered)
        return Decision("not_monotone", f"not monotone: mean {search.metric} by {name}: {seen}")
    length = _arc_lengths(ordered)
    total = length[-1]
    if total == 0:
        return Decision("not_reachable", f"no curve: every value gives the same mean {search.metric} and {search.along}")
    spacing = total / (search.points - 1)
    chosen, worst, wanted = [ordered[0]], 0.0, []
    for k in range(1, search.points - 1):
        goal = k * spacing
        j = min(range(len(ordered)), key=lambda i: (abs(length[i] - goal), i))
        off = abs(length[j] - goal) / spacing
        worst = max(worst, off)
        chosen.append(ordered[j])
        if off > search.tolerance:
            seg = next(i for i in range(len(ordered) - 1) if length[i] <= goal <= length[i + 1])
            a, b = ordered[seg], ordered[seg + 1]
            t = (goal - length[seg]) / (length[seg + 1] - length[seg])
            value = a.value + t * (b.value - a.value)
            value = float(round(value)) if integer else round(value, search.decimals)
            if a.value < value < b.value:
                wanted.append(value)
    chosen.append(ordered[-1])
    picked = ", ".join(f"{p.value:g}" for p in chosen)
    found = (
        f"{search.points} points along ({search.metric}, {search.along}) at {name} = {picked}; "
        f"worst position {worst:.2f} of the spacing from its goal"
    )
    kwargs = {"distance": worst, "chosen": tuple(chosen)}
    if worst <= search.tolerance:
        return Decision("reached", f"reached: {found} (tolerance {search.tolerance:g}) in {rounds} rounds", **kwargs)
    if rounds >= search.max_rounds:
        return Decision("max_rounds", f"max_rounds ({search.max_rounds}) reached: {found}", **kwargs)
    if not wanted:
        return Decision("resolution", f"resolution: no new value at decimals={search.decimals}; {found}", **kwargs)
    nexts = tuple(sorted(set(wanted)))
    message = f"next {name} = {', '.join(f'{v:g}' for v in nexts)}"
    return Decision("running", message, nexts, **kwargs)


def _arc_lengths(ordered: Sequence[Point]) -> list[float]:
    """Cumulative length along the points' (mean, along) polyline, each metric scaled by its range."""
    def scaled(values: list[float]) -> list[float]:
        span = max(values) - min(values)
        return [(v - min(values)) / span if span > 0 else 0.0 for v in values]

    xs, ys = scaled([p.mean for p in ordered]), scaled([p.along for p in ordered])
    out = [0.0]
    for i in range(1, len(ordered)):
        out.append(out[-1] + math.hypot(xs[i] - xs[i - 1], ys[i] - ys[i - 1]))
    return out


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
    return numeric_type(model.model_fields[entry.search.key]) is int


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
    """Per searched entry, its values (in round order) with the mean metric(s) of their stored ok rows."""
    rows = store.read_results(columns=["task_key", "status", "scores"])
    ok = rows[rows["status"] == "ok"] if not rows.empty else rows
    scores = dict(zip(ok["task_key"], ok["scores"]))
    points: dict[int, list[Point]] = {}
    for i, search in spec.searches.items():
        points[i] = []
        for value in values[i]:
            found = [dict(scores.get(key) or {}) for key in point_task_keys(spec, i, value)]
            mean, n = _mean(found, search.metric)
            along = _mean(found, search.along)[0] if search.along else None
            points[i].append(Point(value, mean, n, along))
    return points


def _mean(scores: list[dict[str, float]], metric: str) -> tuple[float | None, int]:
    """The mean of `metric` over the score dicts where it is finite (None if none), and their count."""
    found = [s[metric] for s in scores if metric in s and math.isfinite(s[metric])]
    return (math.fsum(found) / len(found) if found else None), len(found)


@dataclass
class AdaptiveResult:
    """What an adaptive run did: one run summary per round and, per search, its record (search.json)."""

    summaries: list[Any]
    searches: list[dict[str, Any]]


def search_record(
    spec: SweepSpec, index: int, points: list[Point], rounds: list[int], decision: Decision
) -> dict[str, Any]:
    """The JSON record of one search: its settings, every value with its round and means, and the outcome."""
    search = spec.methods[index].search
    outcome: dict[str, Any] = {"status": decision.status, "message": decision.message, "distance": decision.distance}
    if search.spread:
        outcome["points"] = [asdict(p) for p in decision.chosen]
    else:
        outcome["value"] = decision.best.value if decision.best else None
        outcome["mean"] = decision.best.mean if decision.best else None
    return {
        "entry": index,
        "method": spec.methods[index].name,
        "search": search.model_dump(mode="json"),
        "rounds": [{"round": r, **asdict(p)} for r, p in zip(rounds, points)],
        "outcome": outcome,
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
    values = {i: initial_values(s, integer[i]) for i, s in searches.items()}
    rounds = {i: [0] * len(values[i]) for i in searches}
    decisions: dict[int, Decision] = {}
    summaries = []
    while True:
        summaries.append(run_round(round_spec(spec, values)))
        done = len(summaries) - 1
        points = read_points(store, spec, values)
        running = [i for i in searches if i not in decisions or decisions[i].next_values]
        for i in running:
            decisions[i] = decide(searches[i], points[i], integer[i], rounds=done + 1)
        records = [search_record(spec, i, points[i], rounds[i], decisions[i]) for i in searches]
        store.write_json(SEARCH_FILE, {"spec": spec.name, "searches": records})
        if not any(d.next_values for d in decisions.values()):
            return AdaptiveResult(summaries, records)
        for i in running:
            values[i] += decisions[i].next_values
            rounds[i] += [done + 1] * len(decisions[i].next_values)


__all__ = [
    "AdaptiveResult", "Decision", "Point", "decide", "decide_spread", "decide_target", "initial_values",
    "read_points", "round_spec", "run_adaptive",
]  # fmt: skip
