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


@pytest.fixture
def spawn_driver(tmp_path):
    """Starts `editsweep run` for a validated spec as a subprocess driver on the test's Ray.

    Call as `spawn_driver(spec, run_dir)`; returns the Popen. For tests that kill or interrupt
    a driver, or run two at once. The caller waits for it (or kills it).
    """
    import os
    import signal
    import subprocess
    import sys

    import ray
    import yaml

    def spawn(spec, run_dir: Path) -> subprocess.Popen:
        spec_file = tmp_path / f"spec-{run_dir.name}.yaml"
        spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        command = [
            sys.executable, "-m", "editsweep.bench.cli", "run", str(spec_file), "--out", str(run_dir),
            "--address", ray.get_runtime_context().gcs_address, "--quiet", "--no-report",
        ]  # fmt: skip
        # SIGINT back to its default in the driver: a pytest started in the background (`cmd &`)
        # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt for it.
        return subprocess.Popen(
            command,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    return spawn


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll an outside process's progress (a file it writes) until `condition()` holds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(name="wait_for")
def wait_for_fixture():
    """`wait_for(condition, timeout, what)`: poll until a condition on another process holds."""
    return wait_for
