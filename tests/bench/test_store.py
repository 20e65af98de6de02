from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from editsweep.bench.store import FILE_SCHEMA, RowBuffer, RunStore

NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)


def row(key, status="ok", seconds=0, method="copy", **extra):
    return dict(
        task_key=key, group_key="g", method=method, dataset="synthetic", status=status,
        created_at=NOW + timedelta(seconds=seconds), **extra,
    )  # fmt: skip


def test_newest_ok_row_wins_and_errors_are_retried(tmp_path):
    store = RunStore(str(tmp_path))
    store.write_rows([row("a", "error", 0, error="boom"), row("a", "ok", 1, scores={"psnr": 20.0})])
    store.write_rows([row("a", "error", 2), row("b", "error", 0)])
    results = store.read_results().set_index("task_key")
    assert results.loc["a", "status"] == "ok" and results.loc["a", "scores"] == {"psnr": 20.0}
    assert results.loc["b", "status"] == "error"
    assert store.completed_task_keys() == {"a"}
    assert len(store.read_all_rows()) == 4


def test_every_file_has_the_explicit_schema_even_when_columns_are_empty(tmp_path):
    store = RunStore(str(tmp_path))
    store.write_rows([row("a", "error")])  # no scores, no prompts, no timing: all null
    store.write_rows([row("b", source_prompt="x", scores={"lpips": 0.1}, features={"f": [1.0, 2.0]}, invert_s=0.5)])
    files = store.list_files("results")
    assert len(files) == 2
    for rel in files:
        assert pq.read_schema(store.path(rel)).equals(FILE_SCHEMA, check_metadata=False)
    results = store.read_results().set_index("task_key")
    assert list(results.loc["b", "features"]["f"]) == [1.0, 2.0]


def test_files_from_before_a_column_was_added_still_read(tmp_path):
    store = RunStore(str(tmp_path))
    store.write_rows([row("new", labels={"edit_type": "1"})])
    old_schema = pa.schema([f for f in FILE_SCHEMA if f.name != "labels"])
    table = pa.Table.from_pylist([{"task_key": "old", "group_key": "g", "status": "ok"}], schema=old_schema)
    pq.write_table(table, store.path("results/method=copy/dataset=synthetic/part-old.parquet"))
    results = store.read_results().set_index("task_key")
    assert results.loc["new", "labels"] == {"edit_type": "1"}
    assert results.loc["old", "labels"] is None and results.loc["old", "method"] == "copy"


def test_partitions_and_concurrent_writers(tmp_path):
    store = RunStore(str(tmp_path))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: store.write_rows([row(f"k{i}", method=("copy", "sdedit")[i % 2])]), range(16)))
    files = store.list_files("results")
    assert len(files) == 16 and not [f for f in files if ".tmp-" in f]
    assert {f.split("/")[1] for f in files} == {"method=copy", "method=sdedit"}
    assert len(store.read_results()) == 16


def test_images_inputs_and_json(tmp_path):
    store = RunStore(str(tmp_path))
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    rel = store.write_image("ab" * 32, image)
    assert rel == f"images/ab/{'ab' * 32}.png"
    assert store.read_image(rel).getpixel((0, 0)) == (10, 20, 30)
    first = store.write_input("tedbench", "000-bird.png", image)
    assert store.write_input("tedbench", "000-bird.png", Image.new("RGB", (8, 8))) == first  # written once
    assert store.read_image(first).getpixel((0, 0)) == (10, 20, 30)
    store.write_json("manifests/r.json", {"a": 1})
    assert store.read_json("manifests/r.json") == {"a": 1}


def test_inputs_of_two_dataset_instances_or_sizes_do_not_overwrite_each_other(tmp_path):
    """Same dataset name and sample id, other params (item 11) or another backbone resolution."""
    store = RunStore(str(tmp_path))
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    a = store.write_input("synthetic", "syn-0000", red, '{"n":2,"seed":0}')
    b = store.write_input("synthetic", "syn-0000", blue, '{"n":2,"seed":1}')
    c = store.write_input("synthetic", "syn-0000", Image.new("RGB", (16, 16), (0, 255, 0)), '{"n":2,"seed":0}')
    assert len({a, b, c}) == 3
    assert store.read_image(a).getpixel((0, 0)) == (255, 0, 0)
    assert store.read_image(b).getpixel((0, 0)) == (0, 0, 255)


def test_a_filesystem_uri_works_like_a_path(tmp_path):
    store = RunStore(f"file://{tmp_path}")
    store.write_rows([row("a")])
    assert RunStore(str(tmp_path)).completed_task_keys() == {"a"}


def test_empty_run_reads_as_no_rows(tmp_path):
    store = RunStore(str(tmp_path / "nothing-yet"))
    assert store.read_results().empty and store.completed_task_keys() == set()


def test_compaction_merges_each_partition_and_keeps_every_row(tmp_path):
    store = RunStore(str(tmp_path))
    for i in range(5):
        store.write_rows([row(f"k{i}", scores={"psnr": float(i)}), row(f"s{i}", method="sdedit")])
    store.write_rows([row("k0", "error", seconds=-5)])  # an older failed attempt of an ok task
    before = store.read_all_rows()
    assert len(store.list_files("results")) == 11
    assert store.compact() == 11
    files = store.list_files("results")
    assert len(files) == 2 and {f.split("/")[1] for f in files} == {"method=copy", "method=sdedit"}
    after = store.read_all_rows()
    key = ["task_key", "status"]
    assert after.sort_values(key)[key].values.tolist() == before.sort_values(key)[key].values.tolist()
    assert store.read_results().set_index("task_key").loc["k3", "scores"] == {"psnr": 3.0}
    assert store.compact() == 0  # nothing left to merge


def test_row_buffer_writes_batches_when_due_and_everything_on_flush(tmp_path, monkeypatch):
    import editsweep.bench.store as store_module

    now = [100.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: now[0])
    store = RunStore(str(tmp_path))
    buffer = RowBuffer(store, max_rows=3, max_seconds=2.0)
    assert not buffer.due() and buffer.seconds_left() is None
    buffer.add([row("a"), row("b")])
    now[0] += 1.5
    assert not buffer.due() and buffer.seconds_left() == 0.5 and store.list_files("results") == []
    buffer.add([row("c")])
    assert buffer.due()  # three rows
    buffer.flush()
    assert len(store.list_files("results")) == 1 and buffer.seconds_left() is None
    buffer.add([row("d")])
    now[0] += 2.0
    assert buffer.due()  # the oldest row is two seconds old
    buffer.flush()
    buffer.flush()  # nothing left: no empty file
    assert len(store.list_files("results")) == 2 and len(store.read_results()) == 4


def test_resume_check_reads_only_the_key_and_status_columns(tmp_path):
    """A file whose other columns no longer match the schema still counts its ok tasks."""
    store = RunStore(str(tmp_path))
    store.write_rows([row("a")])
    odd = pa.schema([("task_key", pa.string()), ("status", pa.string()), ("scores", pa.string())])
    table = pa.Table.from_pylist([{"task_key": "b", "status": "ok", "scores": "not a map"}], schema=odd)
    pq.write_table(table, store.path("results/method=copy/dataset=synthetic/part-odd.parquet"))
    assert store.completed_task_keys() == {"a", "b"}


def truncate_half(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_a_truncated_file_is_quarantined_and_its_tasks_recomputed(tmp_path):
    store = RunStore(str(tmp_path))
    store.write_rows([row("a"), row("b")])
    store.write_rows([row("c")])
    bad = next(f for f in store.list_files("results") if pq.read_table(store.path(f))["task_key"].to_pylist() == ["c"])
    truncate_half(store.path(bad))
    assert store.completed_task_keys() == {"a", "b"}  # a read-only check skips it and moves nothing
    assert store.path(bad) in [store.path(f) for f in store.list_files("results")]
    assert store.completed_task_keys(quarantine=True, run_id="r2") == {"a", "b"}
    assert bad not in store.list_files("results")
    notes = store.quarantined()
    assert [n["file"] for n in notes] == [bad] and "magic bytes" in notes[0]["reason"]
    assert notes[0]["run_id"] == "r2" and notes[0]["quarantined_at"]
    assert f"quarantine/{bad}" in store.list_files("quarantine")
    store.write_rows([row("c")])  # recomputed
    store.write_rows([row("d")])
    assert store.compact() == 3
    assert set(store.read_results()["task_key"]) == {"a", "b", "c", "d"}


def test_compaction_quarantines_an_unreadable_file_instead_of_failing(tmp_path):
    store = RunStore(str(tmp_path))
    for key in ("a", "b", "c"):
        store.write_rows([row(key)])
    bad = store.list_files("results")[0]
    truncate_half(store.path(bad))
    store.compact()
    assert [n["file"] for n in store.quarantined()] == [bad]
    assert store.compact() == 2  # the readable files merge on the next compaction
    assert len(store.read_results()) == 2


def test_two_compactions_of_the_same_files_do_not_fail(tmp_path, monkeypatch):
    """The second compactor listed the files before the first deleted them: it skips what vanished."""
    store, other = RunStore(str(tmp_path)), RunStore(str(tmp_path))
    for i in range(4):
        store.write_rows([row(f"k{i}"), row(f"s{i}", method="sdedit")])
    stale = store.list_files("results")
    other.compact()
    monkeypatch.setattr(store, "list_files", lambda rel: stale if rel == "results" else RunStore.list_files(store, rel))
    store.compact()
    assert sorted(RunStore(str(tmp_path)).read_results()["task_key"]) == sorted(
        [f"k{i}" for i in range(4)] + [f"s{i}" for i in range(4)]
    )


def test_compaction_merges_in_batches_and_keeps_features(tmp_path):
    store = RunStore(str(tmp_path))
    for i in range(6):
        store.write_rows([row(f"k{i}-{j}", features={"f": [float(i)] * 4}) for j in range(10)])
    assert store.compact(batch_rows=16) == 6
    (merged,) = store.list_files("results")
    assert pq.ParquetFile(store.path(merged)).metadata.num_row_groups == 3  # 60 rows gathered into groups of >= 16
    features = store.read_results().set_index("task_key")["features"]
    assert list(features["k5-3"]["f"]) == [5.0] * 4


def test_row_buffer_compacts_every_so_many_files(tmp_path):
    store = RunStore(str(tmp_path))
    buffer = RowBuffer(store, max_rows=1, max_seconds=60.0, compact_every=3)
    for i in range(7):
        buffer.add([row(f"k{i}")])
        buffer.flush()
    # two periodic compactions (after files 3 and 6) merged the small files; file 7 waits for the next
    assert buffer.files_compacted == 6
    assert len(store.list_files("results")) == 3
    assert len(store.read_results()) == 7


def test_periodic_compaction_leaves_merged_files_alone_and_the_final_one_merges_all(tmp_path):
    store = RunStore(str(tmp_path))
    for i in range(4):
        store.write_rows([row(f"k{i}")])
    store.compact(small_only=True)
    store.write_rows([row("k4")])
    store.write_rows([row("k5")])
    assert store.compact(small_only=True) == 2
    assert len(store.list_files("results")) == 2
    assert store.compact() == 2 and len(store.list_files("results")) == 1
    assert len(store.read_results()) == 6


def test_no_temporary_file_is_ever_read_as_results(tmp_path):
    store = RunStore(str(tmp_path))
    store.write_rows([row("a")])
    folder = store.path("results/method=copy/dataset=synthetic")
    with open(f"{folder}/.tmp-half-written.parquet", "wb") as f:
        f.write(b"PAR1 not finished")
    assert store.completed_task_keys() == {"a"} and len(store.read_results()) == 1
    assert store.compact() == 0


@pytest.mark.slow
def test_a_run_quarantines_a_truncated_file_recomputes_its_tasks_and_compacts(
    ray_session, make_spec, run_invariants, tmp_path
):
    from editsweep.bench.plan import plan
    from editsweep.bench.runner import run_sweep
    from editsweep.bench.status import format_status, run_status

    spec = make_spec([{"name": "copy"}, {"name": "faulty", "invert": {}}], n=3)
    run_dir = tmp_path / "run"
    assert run_sweep(spec, run_dir, progress=False).n_ok == 6
    store = RunStore(str(run_dir))
    (bad,) = [f for f in store.list_files("results") if "method=faulty" in f]  # compacted: one file per partition
    truncate_half(store.path(bad))

    again = run_sweep(spec, run_dir, progress=False)
    assert (again.n_skipped, again.n_ok, again.n_error) == (3, 3, 0)  # the faulty partition's tasks ran again
    assert store.latest_manifest().quarantined == [bad] and store.latest_manifest().finished_at
    assert len(store.result_files()) == 2 and f"quarantine/{bad}" in store.list_files("quarantine")
    run_invariants(run_dir, {t.task_key for t in plan(spec)[0]})
    text = format_status(run_status(str(run_dir)))
    assert "6 tasks, 6 done" in text and "quarantined: 1 unreadable result files" in text and bad in text
