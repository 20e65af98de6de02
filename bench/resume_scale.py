"""Benchmark of the resume check at scale: `RunStore.completed_task_keys()` over many small files.

    python -m editsweep.bench.resume_scale DIR [--rows 1000000] [--files 20000] [--features 0.02]
        [--compact-every 0] [--old] [--compact]

Writes (once; reused when DIR already holds them) `--rows` result rows in `--files` Parquet files
of the store's layout across four methods of one dataset: with `--compact-every 0`, one file per
flush, as a long run left them before issue 10; with `--compact-every 200`, merged every 200
files as the driver's `RowBuffer` now does (`RunStore.compact(small_only=True)`). Every row has a
scores map of four metrics; a fraction `--features` of the rows also carries a 2048-float32
feature vector (Inception pool3, as the FID/CSFID scorers store).
Then each reader runs in a fresh process and reports its wall time and peak memory (RSS growth
over the process after imports): `new` is today's `completed_task_keys`, `old` (with `--old`) the
reader before issue 10 (every column of every file into pandas), and `compact` times the run-end
compaction of the same files, streaming, with its peak memory. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from editsweep.bench.store import FILE_SCHEMA, RunStore

METHODS = ("copy", "ddim_edit", "sdedit", "null_text")
FEATURE_DIM = 2048


def write_files(
    run_dir: str, rows: int, files: int, features: float, compact_every: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Write `rows` rows in `files` files (columnar, not through dicts: 10**6 dicts would dominate),
    compacting the small ones every `compact_every` files (0: never)."""
    store = RunStore(run_dir)
    rng = np.random.default_rng(seed)
    per_file = -(-rows // files)
    started, written, key = time.perf_counter(), 0, 0
    for i in range(files):
        n = min(per_file, rows - written)
        if n <= 0:
            break
        method = METHODS[i % len(METHODS)]
        keys = [f"{k:064x}" for k in range(key, key + n)]
        key += n
        score = {"psnr": 20.0, "ssim": 0.5, "lpips": 0.3, "clip_t": 0.25}
        scores = pa.array([score] * n, FILE_SCHEMA.field("scores").type)
        with_features = rng.random(n) < features
        vectors = rng.random((int(with_features.sum()), FEATURE_DIM), dtype=np.float32)
        feats, j = [], 0
        for has in with_features:
            feats.append({"inception": vectors[j]} if has else {})
            j += int(has)
        columns = {
            "task_key": pa.array(keys),
            "group_key": pa.array(keys),
            "run_id": pa.array(["bench"] * n),
            "sample_id": pa.array([f"syn-{k % 1000:04d}" for k in range(n)]),
            "status": pa.array(["ok" if k % 50 else "error" for k in range(n)]),
            "scores": scores,
            "features": pa.array(feats, FILE_SCHEMA.field("features").type),
            "created_at": pa.array([0] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
        table = pa.table(
            {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in FILE_SCHEMA}, schema=FILE_SCHEMA
        )
        folder = Path(store.path(f"results/method={method}/dataset=synthetic"))
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"part-{uuid.uuid4().hex}.parquet")
        written += n
        if compact_every and (i + 1) % compact_every == 0:
            store.compact(small_only=True)
    size = sum(p.stat().st_size for p in Path(store.path("results")).rglob("*.parquet"))
    return dict(
        rows=written, files_written=files, files_left=len(store.result_files()),
        write_seconds=round(time.perf_counter() - started, 1), mb=round(size / 2**20),
    )  # fmt: skip


def old_completed_task_keys(store: RunStore) -> set[str]:
    """The resume check before issue 10 (bench/store.py at d8e731d), for comparison: all columns, pandas."""
    import pyarrow.dataset as pads

    from editsweep.bench.store import PARTITION_COLS, SCHEMA

    dataset = pads.dataset(
        store.path("results"), filesystem=store.fs, format="parquet", schema=SCHEMA,
        partitioning=pads.partitioning(pa.schema([(c, pa.string()) for c in PARTITION_COLS]), flavor="hive"),
        exclude_invalid_files=True,
    )  # fmt: skip
    rows = dataset.to_table().select(SCHEMA.names).to_pandas(maps_as_pydicts="strict")
    return set(rows.loc[rows["status"] == "ok", "task_key"])


def measure(run_dir: str, reader: str) -> dict[str, Any]:
    """Run one reader in this process; wall seconds and peak RSS growth in MB."""
    store = RunStore(run_dir)
    base = _rss_mb()
    started = time.perf_counter()
    if reader == "new":
        n = len(store.completed_task_keys())
    elif reader == "old":
        n = len(old_completed_task_keys(store))
    else:
        n = store.compact()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(reader=reader, result=n, seconds=round(seconds, 2), peak_mb_over_imports=round(peak - base))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    """Command line: write the files if needed, then time each reader in a fresh process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--features", type=float, default=0.02, help="fraction of rows with a feature vector")
    parser.add_argument("--compact-every", type=int, default=0, help="merge the small files every N files (0: never)")
    parser.add_argument("--old", action="store_true", help="also time the reader before issue 10")
    parser.add_argument("--compact", action="store_true", help="also time the run-end compaction (merges the files)")
    parser.add_argument("--measure", choices=["new", "old", "compact"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.dir, args.measure)))
        return 0
    result: dict[str, Any] = dict(features_fraction=args.features, feature_dim=FEATURE_DIM)
    if not RunStore(args.dir).result_files():
        result["written"] = write_files(args.dir, args.rows, args.files, args.features, args.compact_every)
    readers = ["new"] + ["old"] * args.old + ["compact"] * args.compact  # compaction last: it merges the files
    for reader in readers:
        out = subprocess.run(
            [sys.executable, "-m", "editsweep.bench.resume_scale", args.dir, "--measure", reader],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result[reader] = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
