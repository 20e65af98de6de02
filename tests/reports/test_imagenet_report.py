"""End to end on an ImageNet-layout folder: copy + SDEdit on the tiny backbone, then the report's curves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from editsweep.bench.cli import main
from editsweep.bench.plan import plan
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker
from editsweep.reports.report import build_report

pytestmark = pytest.mark.slow  # loads four scorers and runs 18 edits: ~35 s of CPU


@pytest.fixture(scope="module")
def imagenet_run(imagenet_layout, tmp_path_factory):
    """A quickstart-sized sweep on 6 queries, run in-process, with reference stats named in the spec."""
    base = tmp_path_factory.mktemp("imagenet-run")
    stats = base / "stats.npz"
    assert main(["reference-stats", str(imagenet_layout["train"]), "--out", str(stats), "--weights", "random"]) == 0
    params = {
        "queries": str(imagenet_layout["queries"]),
        "root": str(imagenet_layout["val"]),
        "reference_stats": str(stats),
    }
    spec = load_spec(
        {
            "name": "imagenet-mini",
            "backbone": {"name": "tiny"},
            "datasets": [{"name": "imagenet", "params": params}],
            "methods": [{"name": "copy"}, {"name": "sdedit", "edit": {"steps": 10, "strength": [0.3, 0.8]}}],
            "metrics": {
                "clip_t": {"model": "ViT-B-32", "weights": "random"},
                "lpips": {"net": "alex", "weights": "random"},
                "inception": {"weights": "random"},
                "flexit_accuracy": {"weights": "random"},
            },
            "allow_random_weights": True,
            "execution": {"batch_size": 6, "edit_batch_size": 12},
        }
    )
    run_dir = str(base / "run")
    store = RunStore(run_dir)
    store.write_json("manifests/20260101T000000Z-test.json", {"spec": spec.model_dump(mode="json")})
    worker = SweepWorker(spec, run_dir, "run-test")
    for unit in plan(spec, set())[1]:
        RunStore(str(run_dir)).write_rows(worker.process(unit).rows)  # as the driver does
    return store, build_report(run_dir, f"sqlite:///{base / 'mlflow.db'}")


def test_rows_carry_classes_features_and_scores(imagenet_run, imagenet_layout):
    store, _ = imagenet_run
    rows = store.read_results()
    assert len(rows) == 18 and rows["status"].eq("ok").all(), rows["error"].dropna().tolist()
    assert set(rows["sample_id"]) == set(imagenet_layout["ids"])
    assert rows["labels"].map(lambda lab: lab["target_wnid"] in imagenet_layout["target_wnids"]).all()
    assert rows["features"].map(lambda f: len(f["inception"]) == 64).all()
    assert rows["scores"].map(lambda s: {"clip_t", "lpips", "accuracy", "unedited"} <= set(s)).all()
    copy = rows[rows["method"] == "copy"]
    assert copy["scores"].map(lambda s: s["lpips"]).abs().max() < 1e-6  # COPY: LPIPS 0


def test_report_has_csfid_and_clip_curves_over_lpips(imagenet_run):
    _, result = imagenet_run
    assert result.tradeoff_png is not None and result.tradeoff_png.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in result.set_figures] == ["tradeoff_csfid.png"]
    assert result.set_figures[0].read_bytes()[:4] == b"\x89PNG"
    with Image.open(result.set_figures[0]) as figure:  # two 8x6-inch panels side by side
        assert figure.width / figure.height == pytest.approx(16 / 6, rel=0.01)
    summary = pd.read_csv(result.summary_csv)
    assert len(summary) == 3
    assert np.isfinite(summary[["sfid_mean", "csfid_mean", "fid_mean", "kid_mean", "accuracy_mean"]]).all().all()
    sdedit = summary[summary["method"] == "sdedit"].sort_values("lpips_mean")
    strengths = [json.loads(p)["strength"] for p in sdedit["edit_params"]]
    assert strengths == [0.3, 0.8]  # more strength, further from the input
    assert "CSFID" in result.leaderboard_md.read_text()
