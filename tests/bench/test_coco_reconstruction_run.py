"""End to end on a test-built COCO folder: the seeded draw, reconstruction by the VAE round trip and
DDIM, PSNR/SSIM/LPIPS, and the reconstruction table with the VAE row as the upper bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editsweep.bench.plan import plan
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker
from editsweep.reports.aggregate import aggregate
from editsweep.reports.breakdown import reconstruction_markdown


def coco_folder(root: Path, n: int = 5) -> Path:
    """val2017/ with non-square images and a captions file, two captions per image."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for i in range(n):
        low = np.random.default_rng(i).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize((80, 60), Image.Resampling.BILINEAR).save(root / "val2017" / f"{i:012d}.jpg")
        images.append({"id": i, "file_name": f"{i:012d}.jpg"})
        annotations += [{"id": 100 + i, "image_id": i, "caption": f"a photo number {i}"}, {"id": 200 + i, "image_id": i, "caption": "other"}]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = coco_folder(tmp_path_factory.mktemp("coco"))
    spec = load_spec(
        {
            "name": "coco-test",
            "backbone": {"name": "tiny", "dtype": "float32", "device": "cpu"},
            "datasets": [{"name": "coco", "params": {"root": str(root), "n": 3, "seed": 0}}],
            "methods": [
                {"name": "vae_roundtrip"},
                {"name": "ddim_edit", "invert": {"steps": 10}, "edit": {"guidance": [1.0, 7.5]}},
            ],
            "metrics": {"psnr": {}, "ssim": {}, "lpips": {"net": "alex", "weights": "random"}},
            "allow_random_weights": True,
        }
    )
    run_dir = tmp_path_factory.mktemp("run")
    worker = SweepWorker(spec, str(run_dir), "run-coco")
    for unit in plan(spec, set())[1]:
        worker.process(unit)
    return RunStore(str(run_dir)).read_results()


def test_reconstruction_rows_use_the_caption_as_both_prompts(results):
    assert len(results) == 3 * 3 and results["status"].eq("ok").all(), results["error"].dropna().tolist()
    assert results["source_prompt"].eq(results["target_prompt"]).all()
    assert results["source_prompt"].str.startswith("a photo number").all()


def test_the_table_puts_the_vae_upper_bound_first_then_every_ddim_point(results):
    text = reconstruction_markdown(results, aggregate(results))
    body = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| ")][2:]
    assert body[0] == ["| vae_roundtrip (upper bound)", "default"]
    assert sorted(row[1] for row in body[1:]) == ["guidance=1", "guidance=7.5"]
    vae = results[results["method"].eq("vae_roundtrip")]
    assert all(np.isfinite(s["psnr"]) and s["lpips"] > 0 for s in vae["scores"])
