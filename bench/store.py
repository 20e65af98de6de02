"""The result store: a hive-partitioned Parquet dataset of rows, PNGs by task key, run manifests.

Layout of a run directory (a local path or a pyarrow filesystem URI such as s3://bucket/run):

    results/method=<m>/dataset=<d>/part-<uuid>.parquet    one file per write, never rewritten
    results/method=<m>/dataset=<d>/merged-<uuid>.parquet  a compaction of such files
    images/<task_key[:2]>/<task_key>.png                  edited images
    inputs/<dataset>/<hash of sample id>.png              inputs as the methods saw them (resized)
    manifests/<run_id>.json                               the run's manifest (`bench/manifest.py`)
    quarantine/results/.../<file>.parquet[.json]          unreadable result files moved aside, with a note
    lock.json                                             the running driver's lock (`bench/lock.py`)
    .editsweep-run                                        marker the workers check (`bench/rundir.py`)

Every file is written under a hidden temporary name (`.tmp-...`, which no reader lists) and then
renamed, so a reader (or a crash) never sees half a file. Rows are append-only: a task retried
after an error gets a new row, and `read_results` keeps the newest row of each task, preferring
`status="ok"`. A file that cannot be read (truncated by a full disk, say) is quarantined by the next
run, which recomputes its tasks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from editsweep.bench.manifest import RunManifest, parse_manifest

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
SMALL_PREFIX = "part-"  # one write of the driver
MERGED_PREFIX = "merged-"  # a compaction
QUARANTINE = "quarantine"
MERGE_BATCH_BYTES = 64 * 2**20  # a merge holds at most about this much of a partition in memory
COMPACT_EVERY_FILES = 200  # the driver compacts the run's small files after this many writes
READER_THREADS = 8  # files read at once by the resume check


class _Unreadable(Exception):
    """A result file that exists but cannot be read (internal to `RunStore._merge`)."""

    def __init__(self, rel: str, err: BaseException) -> None:
        super().__init__(rel)
        self.rel, self.err = rel, err


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
        tmp = _tmp_name(final)
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

    def write_input(self, dataset: str, sample_id: str, image: Image.Image, dataset_params: str = "{}") -> str:
        """Store a sample's input at the backbone's resolution once; returns its relative path.

        The name hashes the dataset instance (name and canonical params) and the size, so two
        instances of one dataset, or two backbones of different resolutions, keep their own inputs.
        """
        key = f"{dataset}/{dataset_params}/{image.size[0]}x{image.size[1]}/{sample_id}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
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

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Append rows (dicts with SCHEMA's columns; missing ones are null), one file per partition.

        Returns the files written, relative to the run directory.
        """
        by_part: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for row in rows:
            by_part.setdefault((row["method"], row["dataset"]), []).append(row)
        written = []
        for (method, dataset), part in by_part.items():
            table = pa.Table.from_pylist([_normalise(r) for r in part], schema=FILE_SCHEMA)
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            rel = f"results/method={method}/dataset={dataset}/{SMALL_PREFIX}{uuid.uuid4().hex}.parquet"
            self._atomic_write(rel, buf.getvalue().to_pybytes())
            written.append(rel)
        return written

    def result_files(self) -> list[str]:
        """The Parquet files of the results table, relative (temporary files excluded)."""
        return [f for f in self.list_files("results") if f.endswith(".parquet") and not _hidden(f)]

    def compact(self, small_only: bool = False, batch_rows: int = 65_536, run_id: str | None = None) -> int:
        """Merge each partition's Parquet files into one; returns how many files it removed.

        `small_only` merges only the files of single writes (`part-*`), not earlier merges: the
        run's periodic compaction (`RowBuffer`), whose cost then stays proportional to what was
        written since the last one. The merge streams record batches into the new file, in row
        groups of about `batch_rows` rows or MERGE_BATCH_BYTES, so a partition's feature vectors
        are never in memory at once. The merged file is written (atomically) before the files it replaces are
        deleted, so an interruption leaves at worst duplicate rows, which `read_results` collapses
        by task key. Files written meanwhile are not touched; a file that vanished meanwhile (merged
        by another compaction) is skipped; an unreadable one is quarantined (`quarantine`) and its
        partition left for the next compaction. Only the run's driver, under its lock
        (`bench/lock.py`), compacts; the tolerance is for a driver whose lock was broken.
        """
        by_dir: dict[str, list[str]] = {}
        for rel in self.result_files():
            if not small_only or rel.rsplit("/", 1)[1].startswith(SMALL_PREFIX):
                by_dir.setdefault(rel.rsplit("/", 1)[0], []).append(rel)
        removed = 0
        for folder, files in by_dir.items():
            if len(files) >= 2:
                removed += self._merge(folder, files, batch_rows, run_id)
        return removed

    def _merge(self, folder: str, files: list[str], batch_rows: int, run_id: str | None) -> int:
        """Stream `files` into one new file of `folder`, then delete them; returns how many it merged."""
        final = self.path(f"{folder}/{MERGED_PREFIX}{uuid.uuid4().hex}.parquet")
        tmp = _tmp_name(final)
        merged: list[str] = []
        try:
            with self.fs.open_output_stream(tmp) as out, pq.ParquetWriter(out, FILE_SCHEMA) as writer:
                groups = _RowGroups(writer, batch_rows, MERGE_BATCH_BYTES)
                for rel in files:
                    try:
                        for batch in self._file_scanner(rel).to_batches(batch_size=batch_rows):
                            groups.add(batch)
                    except (OSError, pa.ArrowException) as err:
                        if self.fs.get_file_info(self.path(rel)).type == pafs.FileType.NotFound:
                            continue  # merged and deleted by another compaction: its rows are there
                        raise _Unreadable(rel, err) from err  # the partial merge is discarded
                    merged.append(rel)
                groups.flush()
        except _Unreadable as bad:
            self._delete_quietly(tmp)
            self.quarantine(bad.rel, f"unreadable during compaction: {bad.err}", run_id)
            return 0
        if not merged:
            self._delete_quietly(tmp)
            return 0
        self.fs.move(tmp, final)
        for rel in merged:
            self._delete_quietly(self.path(rel))
        return len(merged)

    def _file_scanner(self, rel: str) -> pads.Dataset:
        """One result file as a dataset with FILE_SCHEMA (columns added since it was written read as null)."""
        return pads.dataset(self.path(rel), filesystem=self.fs, format="parquet", schema=FILE_SCHEMA)

    def _delete_quietly(self, path: str) -> None:
        """Delete a file that may already be gone."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass
        except OSError:
            if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                raise

    def quarantine(self, rel: str, reason: str, run_id: str | None = None) -> str:
        """Move an unreadable file to `quarantine/<rel>` with a note `quarantine/<rel>.json` saying why and when.

        Its rows no longer count (their tasks run again); the file stays for inspection. Returns
        the new relative path.
        """
        dest = f"{QUARANTINE}/{rel}"
        self.fs.create_dir(self.path(dest).rsplit("/", 1)[0], recursive=True)
        self.fs.move(self.path(rel), self.path(dest))
        note = dict(file=rel, reason=reason, quarantined_at=datetime.now(timezone.utc).isoformat(), run_id=run_id)
        self.write_json(f"{dest}.json", note)
        return dest

    def quarantined(self) -> list[dict[str, Any]]:
        """The notes of every quarantined file (file, reason, quarantined_at, run_id), oldest first."""
        notes = [self.read_json(rel) for rel in self.list_files(QUARANTINE) if rel.endswith(".parquet.json")]
        return sorted(notes, key=lambda n: str(n.get("quarantined_at")))

    def _scan(self, columns: list[str]) -> pa.Table:
        """`columns` of every stored row (partition columns included), reading only those columns.

        One multi-threaded scan over the result files; if it fails, each file is checked on its
        own (in threads) and the unreadable ones are left out (a run quarantines them).
        """
        files = self.result_files()
        try:
            return self._dataset(files).to_table(columns=columns)
        except (OSError, pa.ArrowException):
            pass
        wanted = [c for c in columns if c in FILE_SCHEMA.names]

        def problem(rel: str) -> str | None:
            try:
                self._file_scanner(rel).to_table(columns=wanted)
                return None
            except (OSError, pa.ArrowException) as err:
                if self.fs.get_file_info(self.path(rel)).type == pafs.FileType.NotFound:
                    return ""  # gone meanwhile (merged by a compaction)
                return str(err)

        with ThreadPoolExecutor(READER_THREADS) as pool:
            problems = dict(zip(files, pool.map(problem, files)))
        return self._dataset([f for f, why in problems.items() if why is None]).to_table(columns=columns)

    def _dataset(self, files: list[str]) -> pads.Dataset:
        """The given result files as one hive-partitioned dataset with SCHEMA."""
        return pads.dataset(
            [self.path(f) for f in files],
            filesystem=self.fs,
            format="parquet",
            schema=SCHEMA,  # files written before a column was added read it as null
            partitioning=pads.partitioning(pa.schema([(c, pa.string()) for c in PARTITION_COLS]), flavor="hive"),
            partition_base_dir=self.path("results"),
        )

    def read_all_rows(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Every stored row (all attempts), as a DataFrame with SCHEMA's columns (or only `columns`).

        Unreadable files are left out (the next run quarantines them).
        """
        table = self._scan(list(columns or SCHEMA.names))
        return table.to_pandas(maps_as_pydicts="strict")

    def read_results(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per task: the newest `ok` row if any, else the newest error row (`columns` only)."""
        wanted = list(columns or SCHEMA.names)
        rows = self.read_all_rows(list(dict.fromkeys([*wanted, "task_key", "status", "created_at"])))
        if rows.empty:
            return rows[wanted]
        rows = rows.assign(_ok=rows["status"].eq("ok")).sort_values(["_ok", "created_at"])
        latest = rows.drop_duplicates("task_key", keep="last").drop(columns="_ok").reset_index(drop=True)
        return latest[wanted]

    def completed_task_keys(self, quarantine: bool = False, run_id: str | None = None) -> set[str]:
        """Task keys that already have an `ok` row: a re-run skips them.

        Reads only the `task_key` and `status` columns, file by file in a thread pool (pyarrow
        releases the GIL; object stores answer slowly but in parallel), so memory stays at the
        keys themselves. Unreadable files are skipped, so their tasks run again; with `quarantine`
        (the run's driver, under its lock) they are also moved aside with a note naming `run_id`.
        """
        keys: set[str] = set()
        files = self.result_files()
        with ThreadPoolExecutor(READER_THREADS) as pool:
            for rel, (ok, problem) in zip(files, pool.map(self._ok_keys, files)):
                if ok is not None:
                    keys.update(ok.to_pylist())
                elif problem and quarantine:
                    self.quarantine(rel, f"unreadable on resume: {problem}", run_id)
        return keys

    def _ok_keys(self, rel: str) -> tuple[pa.ChunkedArray | None, str | None]:
        """The keys of one file's ok rows, or None and why it cannot be read ("" when it vanished)."""
        try:
            with self.fs.open_input_file(self.path(rel)) as f:
                table = pq.ParquetFile(f).read(columns=["task_key", "status"], use_threads=False)
        except (OSError, pa.ArrowException) as err:
            if self.fs.get_file_info(self.path(rel)).type == pafs.FileType.NotFound:
                return None, ""  # merged meanwhile by a compaction
            return None, str(err)
        return table.filter(pc.equal(table["status"], "ok"))["task_key"], None

    def write_json(self, rel: str, payload: Mapping[str, Any]) -> None:
        """Write a JSON document (manifest, summary) atomically."""
        self._atomic_write(rel, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> dict[str, Any]:
        """Read a JSON document written by `write_json`."""
        with self.fs.open_input_file(self.path(rel)) as f:
            return json.loads(f.read())

    def latest_manifest(self) -> RunManifest | None:
        """The newest run's manifest (run ids sort by start time), or None before any run.

        Raises ManifestError naming the file when it is not a manifest.
        """
        manifests = [p for p in self.list_files("manifests") if p.endswith(".json") and not _hidden(p)]
        if not manifests:
            return None
        rel = max(manifests)
        with self.fs.open_input_file(self.path(rel)) as f:
            return parse_manifest(f.read(), f"{self.uri.rstrip('/')}/{rel}")

    def write_manifest(self, manifest: RunManifest) -> None:
        """Write (or rewrite) `manifests/<run_id>.json`."""
        self.write_json(f"manifests/{manifest.run_id}.json", manifest.model_dump(mode="json"))

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
    (images are overwritten, rows are keyed by task). Call `flush` on every way out. Every
    `compact_every` files written, the run's small files are merged (`RunStore.compact(small_only=True)`),
    so a long or interrupted run leaves hundreds of files for the resume check, not one per flush.
    """

    def __init__(
        self,
        store: RunStore,
        max_rows: int,
        max_seconds: float,
        compact_every: int = COMPACT_EVERY_FILES,
        run_id: str | None = None,
        may_compact: Callable[[], bool] | None = None,
    ) -> None:
        self.store, self.max_rows, self.max_seconds = store, max_rows, max_seconds
        self.compact_every, self.run_id = compact_every, run_id
        self.may_compact = may_compact or (lambda: True)  # the driver's: whether it still holds the run lock
        self.rows: list[Mapping[str, Any]] = []
        self.since: float | None = None  # monotonic time of the oldest buffered row
        self.files_since_compaction = 0
        self.files_compacted = 0

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
            self.files_since_compaction += len(self.store.write_rows(self.rows))
        self.rows, self.since = [], None
        if self.compact_every and self.files_since_compaction >= self.compact_every and self.may_compact():
            self.files_compacted += self.store.compact(small_only=True, run_id=self.run_id)
            self.files_since_compaction = 0


class _RowGroups:
    """Collects record batches and writes them as row groups of about `max_rows` rows or `max_bytes`.

    Small files merge into few row groups (one per write would make the merged file slow to scan),
    while no more than one group's worth of rows is held in memory.
    """

    def __init__(self, writer: pq.ParquetWriter, max_rows: int, max_bytes: int) -> None:
        self.writer, self.max_rows, self.max_bytes = writer, max_rows, max_bytes
        self.batches: list[pa.RecordBatch] = []
        self.rows = self.bytes = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.batches.append(batch)
        self.rows += batch.num_rows
        self.bytes += batch.nbytes
        if self.rows >= self.max_rows or self.bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self.batches:
            table = pa.Table.from_batches(self.batches, schema=FILE_SCHEMA)
            self.writer.write_table(table, row_group_size=max(self.rows, 1))
        self.batches, self.rows, self.bytes = [], 0, 0


def _abspath(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _tmp_name(final: str) -> str:
    """A hidden sibling of `final` to write to before renaming: dataset scans skip names starting with '.'."""
    folder, name = final.rsplit("/", 1)
    return f"{folder}/.tmp-{uuid.uuid4().hex}-{name}"


def _hidden(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1].startswith((".", "_"))


def _normalise(row: Mapping[str, Any]) -> dict[str, Any]:
    """Drop partition columns and fill missing columns with None, so every file has FILE_SCHEMA."""
    out = {name: row.get(name) for name in FILE_SCHEMA.names}
    out["labels"] = {str(k): str(v) for k, v in (row.get("labels") or {}).items()}
    out["scores"] = {k: float(v) for k, v in (row.get("scores") or {}).items()}
    out["features"] = {k: [float(x) for x in v] for k, v in (row.get("features") or {}).items()}
    return out
