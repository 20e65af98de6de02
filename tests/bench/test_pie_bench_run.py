"""End to end on a test-built PIE-Bench folder: plan, invert, edit (P2P with LocalBlend from the
blended words), score with the PIE-Bench scorers, store, and the per-edit-type table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editsweep.bench.plan import plan
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker
from editsweep.reports.breakdown import edit_type_markdown

ENTRIES = [
    ("111000000001", "1_change_object_80", "a [cat] on a table", "a [dog] on a table", "1", "cat dog"),
    ("611000000002", "6_change_attribute_color_40", "a [white] horse", "a [brown] horse", "6", "horse horse"),
    ("611000000003", "6_change_attribute_color_40", "a [red] car", "a [blue] car", "6", "car car"),
    ("900000000004", "9_change_style_80", "a photo of a lake", "a [watercolor painting] of a lake", "9", ""),
]


def make_pie_root(root: Path) -> Path:
    """mapping_file.json + annotation_images/ with 64 px images and box masks (RLE as published)."""
    mapping = {}
    for i, (key, folder, source, target, type_id, blended) in enumerate(ENTRIES):
        path = root / "annotation_images" / folder / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        low = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize((64, 64), Image.Resampling.BILINEAR).save(path)
        rows = range(128 + 32 * i, 320 + 32 * i)  # a box in the middle, one run per row
        mask = [v for r in rows for v in (r * 512 + 160, 192)]
        mapping[key] = {
            "image_path": f"{folder}/{key}.jpg",
            "original_prompt": source,
            "editing_prompt": target,
            "editing_instruction": "",
            "editing_type_id": type_id,
            "blended_word": blended,
            "mask": mask,
        }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = make_pie_root(tmp_path_factory.mktemp("PIE-Bench"))
    spec = load_spec(
        {
            "name": "pie-test",
            "backbone": {"name": "tiny", "dtype": "float32", "device": "cpu"},
            "datasets": [{"name": "pie_bench", "params": {"root": str(root)}}],
            "seeds": [1234],
            "methods": [
                {"name": "copy"},
                {"name": "vae_roundtrip"},
                {
                    "name": "ddim_p2p",
                    "invert": {"steps": 10},
                    # PIE-Bench's P2P: LocalBlend on the blended words where a sample has them.
                    "edit": {"cross_replace": 0.4, "self_replace": 0.6, "local_blend": "when_given", "guidance": 7.5},
                },
            ],
            # pie_clip is left to its own test: importing open_clip alone takes ~15 s.
            "metrics": {"pie_unedited": {"weights": "random"}},
            "allow_random_weights": True,
            "execution": {"batch_size": 4},
        }
    )
    run_dir = tmp_path_factory.mktemp("run")
    worker = SweepWorker(spec, str(run_dir), "run-pie")
    _, units = plan(spec, set())
    for unit in units:
        worker.process(unit)
    return RunStore(str(run_dir)).read_results()


def test_every_task_is_ok_with_the_pie_bench_scores_and_edit_type_labels(results):
    assert len(results) == 3 * 4 and results["status"].eq("ok").all(), results["error"].dropna().tolist()
    expected = {"psnr_unedited", "lpips_unedited", "mse_unedited", "ssim_unedited"}
    assert all(set(s) == expected for s in results["scores"])
    assert sorted({lab["edit_type"] for lab in results["labels"]}) == ["1", "6", "9"]
    assert set(results["target_prompt"]) == {"a dog on a table", "a brown horse", "a blue car", "a watercolor painting of a lake"}


def test_copy_gives_zero_lpips_and_mse_and_the_others_do_not(results):
    by_method = {m: group["scores"].tolist() for m, group in results.groupby("method")}
    # LPIPS of identical batches is 0 up to float rounding in batched convolutions (~1e-13 here).
    assert all(s["lpips_unedited"] < 1e-9 and s["mse_unedited"] == 0 for s in by_method["copy"])
    assert all(math.isinf(s["psnr_unedited"]) for s in by_method["copy"])
    for method in ("vae_roundtrip", "ddim_p2p"):
        assert all(s["lpips_unedited"] > 0 and math.isfinite(s["psnr_unedited"]) for s in by_method[method])


def test_the_breakdown_has_a_row_per_edit_type_present(results):
    text = edit_type_markdown(results)
    psnr = text.split("## PSNR (unedited)")[1].split("## ")[0]
    rows = [line.split(" | ")[0] for line in psnr.splitlines() if line.startswith("| ")][2:]
    assert rows == ["| 1 change_object", "| 6 change_attribute_color", "| 9 change_style", "| all"]
    assert "| 6 change_attribute_color | – |" in psnr  # copy: +inf everywhere, left out of the mean

