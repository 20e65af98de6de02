"""Per-edit-type tables (PIE-Bench) and the reconstruction table (COCO), from synthetic rows."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from editsweep.reports.aggregate import aggregate
from editsweep.reports.breakdown import edit_type_markdown, edit_type_means, reconstruction_markdown
from editsweep.reports.report import build_report
from editsweep.reports.tracking import MlflowClient

TYPES = {"1": "change_object", "6": "change_attribute_color", "9": "change_style"}


def pie_rows(row_maker, method: str, lpips_by_type: dict[str, float]) -> list[dict]:
    """Two samples per edit type; the second sample of type 9 has an all-edit mask (NaN scores)."""
    rows = []
    for k, (type_id, lpips) in enumerate(lpips_by_type.items()):
        for j in range(2):
            nan = type_id == "9" and j == 1
            scores = {
                "lpips_unedited": math.nan if nan else lpips + 0.01 * j,
                "psnr_unedited": math.nan if nan else 25.0 + k,
                "clip_whole": 24.0,
            }
            labels = {"edit_type": type_id, "edit_type_name": TYPES[type_id]}
            rows.append(row_maker(method, 7.5, 10 * k + j, 0, scores, labels=labels))
    return rows


@pytest.fixture(scope="module")
def rows(row_maker) -> pd.DataFrame:
    raw = pie_rows(row_maker, "ddim_p2p", {"1": 0.2, "6": 0.1, "9": 0.3})
    raw += pie_rows(row_maker, "null_text", {"1": 0.05, "6": 0.04})  # no type-9 rows for this one
    return pd.DataFrame(raw)


def test_means_per_point_and_edit_type_leave_nan_out(rows):
    means = edit_type_means(rows).set_index(["method", "edit_type"])
    assert means.loc[("ddim_p2p", "1"), "lpips_unedited"] == pytest.approx(0.205)
    assert means.loc[("ddim_p2p", "9"), "lpips_unedited"] == pytest.approx(0.3)  # the NaN image left out
    assert means.loc[("ddim_p2p", "9"), "n"] == 2
    assert means.loc[("ddim_p2p", "all"), "lpips_unedited"] == pytest.approx((0.2 + 0.21 + 0.1 + 0.11 + 0.3) / 5)
    assert means.loc[("null_text", "all"), "n"] == 4
    assert ("null_text", "9") not in means.index
    assert list(edit_type_means(rows).columns[-3:]) == ["psnr_unedited", "lpips_unedited", "clip_whole"]


def test_table_has_one_row_per_edit_type_present_in_pie_bench_scale(rows):
    text = edit_type_markdown(rows)
    sections = text.split("## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["PSNR (unedited) ↑", "LPIPS (unedited) ↓ (x1000)", "CLIP whole ↑"]
    table = [line for line in sections[1].splitlines() if line.startswith("| ")]
    header, body = table[0], table[2:]
    assert header == "| edit type | ddim_p2p | null_text | n |"
    assert [r.split(" | ")[0] for r in body] == ["| 1 change_object", "| 6 change_attribute_color", "| 9 change_style", "| all"]
    assert body[0] == "| 1 change_object | 205.00 | 55.00 | 2/2 |"
    assert body[2] == "| 9 change_style | 300.00 | – | 2/0 |"


def test_no_edit_type_labels_means_no_table(rows):
    assert edit_type_markdown(rows.assign(labels=[{}] * len(rows))) is None
    assert edit_type_markdown(rows.assign(labels=None)) is None


def test_reconstruction_table_labels_the_vae_row_as_the_upper_bound(row_maker, run_factory):
    rng = np.random.default_rng(0)
    raw = []
    for method, psnr in (("ddim_edit", 14.0), ("null_text", 24.0), ("vae_roundtrip", 27.0)):
        for sample in range(4):
            scores = {"psnr": psnr + rng.normal(0, 0.1), "ssim": 0.5, "lpips": 0.3}
            raw.append(row_maker(method, 7.5, sample, 0, scores, source_prompt="a cat", target_prompt="a cat"))
    results = run_factory(raw, images=False).read_results()
    text = reconstruction_markdown(results, aggregate(results))
    body = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert [r.split(" | ")[0] for r in body] == ["| vae_roundtrip (upper bound)", "| null_text", "| ddim_edit"]
    assert "PSNR ↑" in text and "SSIM ↑" in text and "LPIPS ↓" in text
    edited = results.assign(target_prompt="a dog")
    assert reconstruction_markdown(edited, aggregate(edited)) is None


def test_build_report_writes_the_breakdown_and_logs_it_to_mlflow(rows, run_factory, mlflow_db_template, tmp_path):
    store = run_factory(rows.to_dict("records"))
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = build_report(store.root, tracking_uri=uri, experiment="pie")
    breakdown = result.report_dir / "edit_types.md"
    assert breakdown.read_text() == edit_type_markdown(store.read_results())
    assert not (result.report_dir / "reconstruction.md").exists()  # target prompts differ from sources
    client = MlflowClient(tracking_uri=uri)
    logged = [a.path for a in client.list_artifacts(result.mlflow_run_id, "report")]
    assert "report/edit_types.md" in logged
