"""Synthetic run directories for the report tests: rows written through RunStore, no model."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from PIL import Image

from editsweep.bench.store import RunStore


def make_row(method: str, guidance: float, sample: int, seed: int, scores: dict[str, float], **extra: Any) -> dict:
    """One result row of a sweep over guidance (steps fixed), with SCHEMA's columns."""
    invert = {"steps": 10}
    edit = {"guidance": guidance, "steps": 10}
    key = f"{method}-{guidance}-{sample}-{seed}"
    row = {
        "task_key": key,
        "group_key": f"{method}-{sample}",
        "run_id": "run-1",
        "method": method,
        "dataset": "toy",
        "backbone": "tiny",
        "dtype": "float32",
        "sample_id": f"s{sample}",
        "seed": seed,
        "invert_params": json.dumps(invert, sort_keys=True),
        "edit_params": json.dumps(edit, sort_keys=True),
        "source_prompt": "a cat",
        "target_prompt": f"a dog number {sample}",
        "status": "ok",
        "scores": scores,
        "random_weights": True,
        "weights": "backbone=tiny:random",
        "invert_s": 0.5,
        "edit_s": 0.1,
        "created_at": datetime.now(timezone.utc),
    }
    row.update(extra)
    return row


def synthetic_rows(n_samples: int = 4, n_seeds: int = 2) -> list[dict]:
    """Two methods swept over guidance: CLIP-T and LPIPS both rise with guidance; one error row."""
    rng = np.random.default_rng(1)
    rows = []
    for method, offset in (("ddim", 0.0), ("nti", -0.1)):
        for guidance in (3.0, 7.5, 12.0):
            for sample in range(n_samples):
                for seed in range(n_seeds):
                    scores = {
                        "clip_t": 0.2 + 0.01 * guidance + rng.normal(0, 0.01),
                        "lpips": 0.2 + 0.02 * guidance + offset + rng.normal(0, 0.01),
                        "psnr": 20.0 + rng.normal(0, 1),
                    }
                    rows.append(make_row(method, guidance, sample, seed, scores))
    rows.append(make_row("nti", 12.0, n_samples, 0, {}, status="error", error="RuntimeError: out of memory"))
    return rows


def write_run(run_dir: str, rows: list[dict], images: bool = True) -> RunStore:
    """Write rows (and a small PNG per ok row) into a run directory."""
    store = RunStore(run_dir)
    for row in rows:
        if images and row["status"] == "ok":
            shade = zlib.crc32(row["task_key"].encode()) % 256
            row["image_path"] = store.write_image(row["task_key"], Image.new("RGB", (16, 16), (shade, 64, 128)))
    store.write_rows(rows)
    return store


@pytest.fixture(scope="session")
def rows_factory() -> Callable[..., list[dict]]:
    """`synthetic_rows` as a fixture (test modules cannot import conftest)."""
    return synthetic_rows


@pytest.fixture(scope="session")
def row_maker() -> Callable[..., dict]:
    """`make_row` as a fixture."""
    return make_row


@pytest.fixture(scope="session")
def run_factory(tmp_path_factory) -> Callable[..., RunStore]:
    """Build a run dir from rows: run_factory(rows, images=True) -> RunStore."""

    def build(rows: list[dict], images: bool = True) -> RunStore:
        return write_run(str(tmp_path_factory.mktemp("run")), rows, images)

    return build


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> str:
    """An initialised MLflow SQLite file: creating the tables takes ~6 s, copying one takes ms."""
    from editsweep.reports.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return str(path)


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch) -> None:
    """Tests choose their tracking URI; a developer's MLFLOW_TRACKING_URI must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def labelled_run(run_dir: str) -> RunStore:
    """A run of `synthetic_rows` whose samples carry an edit type (s0, s2: color; s1, s3: shape)
    and a stored input image, as the site's gallery and edit-type filter need."""
    rows = synthetic_rows()
    store = RunStore(run_dir)
    for row in rows:
        n = int(row["sample_id"][1:])
        row["labels"] = {"edit_type": str(n % 2), "edit_type_name": ("color", "shape")[n % 2]}
        row["input_path"] = store.write_input("toy", row["sample_id"], Image.new("RGB", (16, 16), (40 * n, 200, 90)))
    return write_run(run_dir, rows)


@pytest.fixture(scope="session")
def labelled_run_factory(tmp_path_factory) -> Callable[[], RunStore]:
    """A new `labelled_run` in its own folder per call."""
    return lambda: labelled_run(str(tmp_path_factory.mktemp("labelled-run")))
