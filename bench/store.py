"""The result store: a hive-partitioned Parquet dataset of rows, PNGs by task key, run manifests.

Layout of a run directory (a local path or a pyarrow filesystem URI such as s3://bucket/run):

    results/method=<m>/dataset=<d>/part-<uuid>.parquet   one file per write, never rewritten
    images/<task_key[:2]>/<task_key>.png                 edited images
    inputs/<dataset>/<hash of sample id>.png             inputs as the methods saw them (resized)
    manifests/<run_id>.json                              spec, git commit, versions, devices

Every file is written under a temporary name and then renamed, so a reader (or a crash) never
sees half a file. Rows are append-only: a task retried after an error gets a new row, and
`read_results` keeps the newest row of each task, preferring `status="ok"`.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

PARTITION_COLS = ("method", "dataset")

SCHEMA = pa.schema(
    [
        pa.field("task_key", pa.string(), nullable=False),
        pa.field("group_key", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("method", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("dataset_params", pa.string()),  # canonical JSON, defaults filled in: with `dataset`, the instance
        pa.field("backbone", pa.string()),
        pa.field("dtype", pa.string()),
        pa.field("sample_id", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("invert_params", pa.string()),  # canonical JSON, defaults filled in
        pa.field("edit_params", pa.string()),  # canonical JSON, defaults filled in
        pa.field("source_prompt", pa.string()),
        pa.field("target_prompt", pa.string()),
        pa.field("labels", pa.map_(pa.string(), pa.string())),  # the sample's scalar meta (edit type, class)
        pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
        pa.field("error", pa.string()),
        pa.field("image_path", pa.string()),  # relative to the run directory
        pa.field("input_path", pa.string()),  # the input as the method saw it (resized), relative
        pa.field("scores", pa.map_(pa.string(), pa.float64())),
        pa.field("features", pa.map_(pa.string(), pa.list_(pa.float32()))),
        pa.field("random_weights", pa.bool_()),  # any scorer or the backbone used random weights
        pa.field("weights", pa.string()),  # e.g. "backbone=tiny:random;clip_t=ViT-B-32:random"
        pa.field("invert_s", pa.float64()),  # the group's inversion time, shared over its tasks
        pa.field("edit_s", pa.float64()),
        pa.field("score_s", pa.float64()),
        pa.field("worker", pa.string()),
        pa.field("device", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
FILE_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in PARTITION_COLS])


class RunStore:
    """Reads and writes one run directory; safe to use from many workers at once."""

    def __init__(self, run_dir: str) -> None:
        self.uri = str(run_dir)
        self.fs, self.root = (
            pafs.FileSystem.from_uri(self.uri)
            if "://" in self.uri
            else (
                pafs.LocalFileSystem(),
                _abspath(self.uri),
            )
        )

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` below the run directory."""
        return "/".join([self.root.rstrip("/"), *parts])

    def _atomic_write(self, rel: str, data: bytes) -> None:
        final = self.path(rel)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, final)

    def write_image(self, task_key: str, image: Image.Image) -> str:
        """Store an edited image as PNG; returns its path relative to the run directory."""
        rel = f"images/{task_key[:2]}/{task_key}.png"
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        self._atomic_write(rel, buf.getvalue())
        return rel

    def delete_image(self, rel: str) -> None:
        """Remove an image written by `write_image` (the worker's cleanup when its row fails)."""
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    def write_input(self, dataset: str, sample_id: str, image: Image.Image) -> str:
        """Store a sample's input at the backbone's resolution once; returns its relative path."""
        digest = hashlib.sha256(f"{dataset}/{sample_id}".encode()).hexdigest()[:16]
        rel = f"inputs/{dataset}/{digest}.png"
        if self.fs.get_file_info(self.path(rel)).type == pafs.FileType.NotFound:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            self._atomic_write(rel, buf.getvalue())
        return rel

    def read_image(self, rel: str) -> Image.Image:
        """Load an image stored by `write_image`."""
        with self.fs.open_input_file(self.path(rel)) as f:
            return Image.open(io.BytesIO(f.read())).convert("RGB")

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows (dicts with SCHEMA's columns; missing ones are null), one file per partition."""
        by_part: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for row in rows:
            by_part.setdefault((row["method"], row["dataset"]), []).append(row)
        for (method, dataset), part in by_part.items():
            table = pa.Table.from_pylist([_normalise(r) for r in part], schema=FILE_SCHEMA)
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            rel = f"results/method={method}/dataset={dataset}/part-{uuid.uuid4().hex}.parquet"
            self._atomic_write(rel, buf.getvalue().to_pybytes())
        return sum(len(p) for p in by_part.values())

    def compact(self) -> int:
        """Merge each partition's Parquet files into one; returns how many files it removed.

        The merged file is written (atomically) before the files it replaces are deleted, so an
        interruption leaves at worst duplicate rows, which `read_results` collapses by task key;
        files written meanwhile by another process are not touched.
        """
        by_dir: dict[str, list[str]] = {}
        for rel in self.list_files("results"):
            if rel.endswith(".parquet"):
                by_dir.setdefault(rel.rsplit("/", 1)[0], []).append(rel)
        removed = 0
        for folder, files in by_dir.items():
            if len(files) < 2:
                continue
            table = pads.dataset([self.path(f) for f in files], filesystem=self.fs, schema=FILE_SCHEMA).to_table()
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            self._atomic_write(f"{folder}/part-{uuid.uuid4().hex}.parquet", buf.getvalue().to_pybytes())
            for f in files:
                self.fs.delete_file(self.path(f))
            removed += len(files)
        return removed

    def read_all_rows(self) -> pd.DataFrame:
        """Every stored row (all attempts), as a DataFrame with SCHEMA's columns."""
        base = self.path("results")
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return SCHEMA.empty_table().to_pandas()
        dataset = pads.dataset(
            base,
            filesystem=self.fs,
            format="parquet",
            schema=SCHEMA,  # files written before a column was added read it as null
            partitioning=pads.partitioning(pa.schema([(c, pa.string()) for c in PARTITION_COLS]), flavor="hive"),
            exclude_invalid_files=True,
        )
        table = dataset.to_table().select(SCHEMA.names)
        return table.to_pandas(maps_as_pydicts="strict")

    def read_results(self) -> pd.DataFrame:
        """One row per task: the newest `ok` row if any, else the newest error row."""
        rows = self.read_all_rows()
        if rows.empty:
            return rows
        rows = rows.assign(_ok=rows["status"].eq("ok")).sort_values(["_ok", "created_at"])
        return rows.drop_duplicates("task_key", keep="last").drop(columns="_ok").reset_index(drop=True)

    def completed_task_keys(self) -> set[str]:
        """Task keys that already have an `ok` row: a re-run skips them."""
        rows = self.read_all_rows()
        return set(rows.loc[rows["status"] == "ok", "task_key"])

    def write_json(self, rel: str, payload: Mapping[str, Any]) -> None:
        """Write a JSON document (manifest, summary) atomically."""
        self._atomic_write(rel, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> dict[str, Any]:
        """Read a JSON document written by `write_json`."""
        with self.fs.open_input_file(self.path(rel)) as f:
            return json.loads(f.read())

    def latest_manifest(self) -> dict[str, Any] | None:
        """The newest run's manifest (run ids sort by start time), or None before any run."""
        manifests = [p for p in self.list_files("manifests") if p.endswith(".json")]
        return self.read_json(max(manifests)) if manifests else None

    def list_files(self, rel: str) -> list[str]:
        """Relative paths of the files below `rel` (empty when it does not exist)."""
        base = self.path(rel)
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        prefix = self.root.rstrip("/") + "/"
        return sorted(i.path.removeprefix(prefix) for i in infos if i.type == pafs.FileType.File)


class RowBuffer:
    """Rows the driver holds until a batch is due: `max_rows` of them, or the oldest `max_seconds` old.

    Fewer, larger Parquet files and little driver time per task. The price is bounded: a driver
    killed outright loses at most `max_seconds` of finished units, which a resumed run recomputes
    (images are overwritten, rows are keyed by task). Call `flush` on every way out.
    """

    def __init__(self, store: RunStore, max_rows: int, max_seconds: float) -> None:
        self.store, self.max_rows, self.max_seconds = store, max_rows, max_seconds
        self.rows: list[Mapping[str, Any]] = []
        self.since: float | None = None  # monotonic time of the oldest buffered row

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Buffer rows; the caller flushes when `due()` (so it can time the writes)."""
        self.rows.extend(rows)
        if self.rows and self.since is None:
            self.since = time.monotonic()

    def due(self) -> bool:
        """True when the buffered rows should be written now."""
        if not self.rows:
            return False
        return len(self.rows) >= self.max_rows or time.monotonic() - (self.since or 0.0) >= self.max_seconds

    def seconds_left(self) -> float | None:
        """How long until the oldest buffered row is due (None when the buffer is empty)."""
        return None if self.since is None else max(0.0, self.since + self.max_seconds - time.monotonic())

    def flush(self) -> None:
        """Write every buffered row as one batch (one file per partition)."""
        if self.rows:
            self.store.write_rows(self.rows)
        self.rows, self.since = [], None


def _abspath(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))


def _normalise(row: Mapping[str, Any]) -> dict[str, Any]:
    """Drop partition columns and fill missing columns with None, so every file has FILE_SCHEMA."""
    out = {name: row.get(name) for name in FILE_SCHEMA.names}
    out["labels"] = {str(k): str(v) for k, v in (row.get("labels") or {}).items()}
    out["scores"] = {k: float(v) for k, v in (row.get("scores") or {}).items()}
    out["features"] = {k: [float(x) for x in v] for k, v in (row.get("features") or {}).items()}
    return out
