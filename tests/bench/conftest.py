"""Helpers for sweep tests: small specs that use the test-only plugin methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

PLUGIN = str(Path(__file__).parent / "plugins" / "faulty_methods.py")


@pytest.fixture
def make_spec():
    """Builds a validated spec dict around the given methods, with the test plugin imported."""
    from editsweep.bench.spec import load_spec

    def make(methods: list[dict[str, Any]], n: int = 3, seeds: list[int] | None = None, **extra: Any):
        raw = {
            "name": "test",
            "imports": [PLUGIN],
            "datasets": [{"name": "synthetic", "params": {"n": n}}],
            "seeds": seeds or [0],
            "methods": methods,
            "metrics": {"psnr": {}},
            **extra,
        }
        return load_spec(raw)

    return make


@pytest.fixture
def plugin():
    """The test plugin module (its INVERTED list records in-process inversions)."""
    from editsweep.bench.spec import import_plugins, load_registries

    load_registries()
    (module,) = import_plugins([PLUGIN])
    return module


@pytest.fixture
def run_invariants():
    """Checks a finished run directory: exactly one ok row per task that can succeed, error rows
    only for the culprits, and no stored image without the ok row that points at it.

    Call as `run_invariants(run_dir, expected_ok, culprits)` with two sets of task keys; returns
    the newest row of each task, indexed by task key.
    """
    from editsweep.bench.store import RunStore

    def check(run_dir: Any, expected_ok: set[str], culprits: set[str] = frozenset()):
        store = RunStore(str(run_dir))
        rows = store.read_all_rows()
        ok = rows[rows["status"] == "ok"]
        assert ok["task_key"].is_unique, "a task has more than one ok row"
        assert set(ok["task_key"]) == set(expected_ok), (
            f"ok tasks differ: missing {len(set(expected_ok) - set(ok['task_key']))}, "
            f"unexpected {len(set(ok['task_key']) - set(expected_ok))}"
        )
        latest = store.read_results().set_index("task_key")
        errors = set(latest.index[latest["status"] == "error"])
        assert errors == set(culprits), f"error rows {sorted(errors - set(culprits))[:3]} are not culprits"
        images = {p.rsplit("/", 1)[-1].removesuffix(".png") for p in store.list_files("images")}
        assert images <= set(ok["task_key"]), f"images without an ok row: {sorted(images - set(ok['task_key']))[:3]}"
        assert set(ok["image_path"].map(lambda p: p.rsplit("/", 1)[-1].removesuffix(".png"))) <= images
        return latest

    return check
