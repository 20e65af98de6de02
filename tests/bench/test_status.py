import pytest

from editsweep.bench.plan import plan
from editsweep.bench.status import format_status, run_status
from editsweep.bench.store import RunStore
from editsweep.bench.worker import task_row


def test_status_counts_done_failed_remaining_and_top_errors(make_spec, tmp_path):
    spec = make_spec([{"name": "copy"}, {"name": "ddim_edit", "edit": {"guidance": [1.0, 7.5]}}], n=3)
    tasks, _ = plan(spec)
    store = RunStore(str(tmp_path))
    store.write_json("manifests/r1.json", {"run_id": "r1", "spec": spec.model_dump(mode="json")})
    copy = [t for t in tasks if t.method == "copy"]
    ddim = [t for t in tasks if t.method == "ddim_edit"]
    store.write_rows(
        [task_row(t, status="ok") for t in copy[:2]]
        + [task_row(t, status="error", error="RuntimeError: boom\ntrace") for t in ddim[:3]]
        + [task_row(ddim[3], status="error", error="ValueError: other")]
    )
    status = run_status(str(tmp_path))
    assert status["per_method"]["copy"] == {"done": 2, "remaining": 1}
    assert status["per_method"]["ddim_edit"] == {"failed": 4, "remaining": 2}
    assert status["top_errors"] == {"RuntimeError: boom": 3, "ValueError: other": 1}
    text = format_status(status)
    assert "9 tasks, 2 done, 4 failed, 3 remaining" in text and "did not finish" in text


def test_status_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run manifest"):
        run_status(str(tmp_path))


def test_status_reports_quarantined_files_and_the_lock_holder(make_spec, tmp_path):
    from editsweep.bench.lock import RunLock

    spec = make_spec([{"name": "copy"}], n=2)
    tasks, _ = plan(spec)
    store = RunStore(str(tmp_path))
    store.write_json("manifests/r1.json", {"run_id": "r1", "spec": spec.model_dump(mode="json")})
    store.write_rows([task_row(tasks[0], status="ok")])
    store.write_rows([task_row(tasks[1], status="ok")])
    bad = store.list_files("results")[1]
    path = store.path(bad)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    store.completed_task_keys(quarantine=True, run_id="r2")
    lock = RunLock(store, "r3").acquire()
    status = run_status(str(tmp_path))
    lock.release()
    assert status["per_method"]["copy"] == {"done": 1, "remaining": 1}
    assert [n["file"] for n in status["quarantined"]] == [bad]
    text = format_status(status)
    assert "quarantined: 1 unreadable result files" in text and bad in text and "magic bytes" in text
    assert "locked by run r3" in text
