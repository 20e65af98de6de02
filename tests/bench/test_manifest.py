"""The typed run manifest (bench/manifest.py) and what `status` and `report` make of bad ones."""

import shutil

import pytest

from editsweep.bench.cli import main
from editsweep.bench.manifest import ManifestError
from editsweep.bench.plan import plan
from editsweep.bench.runner import run_sweep
from editsweep.bench.spec import load_spec
from editsweep.bench.status import run_status
from editsweep.bench.store import RunStore
from editsweep.bench.worker import task_row



def test_a_garbage_manifest_names_its_file_in_status_and_report(tmp_path, capsys):
    store = RunStore(str(tmp_path))
    store.write_rows([task_row_like("a")])
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "20260101T000000Z-abc.json").write_text("{ garbage")
    with pytest.raises(ManifestError, match=r"manifests/20260101T000000Z-abc.json is not valid JSON"):
        run_status(str(tmp_path))
    for command in (["status", str(tmp_path)], ["report", str(tmp_path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "20260101T000000Z-abc.json is not valid JSON" in err and "Traceback" not in err


def test_a_manifest_without_spec_names_the_file_and_the_field(tmp_path, capsys):
    store = RunStore(str(tmp_path))
    store.write_json("manifests/20260101T000000Z-abc.json", {"run_id": "20260101T000000Z-abc"})
    with pytest.raises(ManifestError, match=r"20260101T000000Z-abc.json is invalid: spec: missing field"):
        run_status(str(tmp_path))
    assert main(["status", str(tmp_path)]) == 2
    assert "spec: missing field" in capsys.readouterr().err


def task_row_like(key):
    from datetime import datetime, timezone

    return dict(task_key=key, group_key="g", method="copy", dataset="synthetic", status="ok",
                created_at=datetime.now(timezone.utc))  # fmt: skip


def test_status_needs_neither_the_datasets_nor_the_plugins(tmp_path):
    """The manifest records planned counts: status works after the plugin and dataset are gone."""
    from PIL import Image

    plugin = tmp_path / "my_methods.py"
    # A plugin of its own (a copy of the shared test plugin would register its names twice).
    plugin.write_text(
        "from editsweep.methods.base import register_method\n"
        "from editsweep.methods.ddim_edit import DDIMEdit\n\n\n"
        "@register_method\nclass GoneDDIM(DDIMEdit):\n    name = 'gone_ddim'\n"
    )
    root = tmp_path / "tedbench"
    (root / "originals").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "originals" / name)
    (root / "input_list.json").write_text(
        '[{"img_name": "a.png", "target_text": "a cat"}, {"img_name": "b.png", "target_text": "a dog"}]'
    )
    spec = load_spec({
        "name": "gone", "imports": [str(plugin)],
        "datasets": [{"name": "tedbench", "params": {"root": str(root)}}],
        "methods": [{"name": "gone_ddim", "edit": {"guidance": [1.0, 7.5]}}, {"name": "copy"}],
        "metrics": {"psnr": {}},
    })  # fmt: skip
    tasks, _ = plan(spec)
    run_dir = tmp_path / "run"
    store = RunStore(str(run_dir))
    store.write_rows([task_row(t, status="ok") for t in tasks])  # every task done: the run needs no Ray
    summary = run_sweep(spec, run_dir, progress=False)
    assert summary.n_skipped == 6
    manifest = store.latest_manifest()
    assert {(p.method, p.dataset, p.tasks) for p in manifest.planned} == {
        ("gone_ddim", "tedbench", 4),
        ("copy", "tedbench", 2),
    }
    # a later run of the same directory failed some tasks, written as its rows
    store.write_rows([task_row(tasks[0], status="error", error="RuntimeError: late\n...")])

    plugin.unlink()
    shutil.rmtree(root)
    status = run_status(str(run_dir))
    assert status["spec"] == "gone" and status["tasks"] == 6 and status["finished"]
    assert status["per_method"] == {"gone_ddim": {"done": 4}, "copy": {"done": 2}}  # ok beats a later error
