"""The PIE-Bench and COCO reconstruction specs: they validate and plan with --dry-run on folders in
each dataset's layout, and without the data they stop with a message naming the folder to provide."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from editsweep.bench.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def pie_folder(root: Path, n: int) -> Path:
    mapping = {}
    for i in range(n):
        key = f"{i:012d}"
        path = root / "annotation_images" / "1_change_object_80" / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16)).save(path)
        mapping[key] = {
            "image_path": f"1_change_object_80/{key}.jpg",
            "original_prompt": "a [cat]",
            "editing_prompt": "a [dog]",
            "editing_instruction": "",
            "editing_type_id": "1",
            "blended_word": "cat dog",
            "mask": [0, 10],
        }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def coco_folder(root: Path, n: int) -> Path:
    (root / "annotations").mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(n)]
    annotations = [{"id": 10 + i, "image_id": i, "caption": "a cat"} for i in range(n)]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def with_root(spec: str, root: Path, tmp_path: Path) -> Path:
    raw = yaml.safe_load((CONFIGS / spec).read_text())
    raw["datasets"][0]["params"]["root"] = str(root)
    path = tmp_path / spec
    path.write_text(yaml.safe_dump(raw))
    return path


def test_pie_bench_spec_plans_three_methods_on_every_sample(tmp_path, capsys):
    spec = with_root("pie-bench.yaml", pie_folder(tmp_path / "pie", 5), tmp_path)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench: 15 tasks in 15 groups" in out
    for method in ("ddim_p2p", "null_text", "direct_inversion"):
        assert f"  {method}: 5 tasks, 5 groups" in out


def test_pie_bench_inversion_editor_spec_inverts_once_per_inversion_and_image(tmp_path, capsys):
    """Every editor of the table shares the image's inversion: 5 inversions (DDIM, Negative-prompt,
    Direct, Null-text, pix2pix-zero's) x 5 images are the groups, whatever the number of editors."""
    spec = with_root("pie-bench-inversion-editor.yaml", pie_folder(tmp_path / "pie", 5), tmp_path)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-inversion-editor: 50 tasks in 25 groups" in out


def test_coco_spec_plans_four_methods_on_the_draw(tmp_path, capsys):
    spec = with_root("coco-reconstruction.yaml", coco_folder(tmp_path / "coco", 130), tmp_path)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "coco-reconstruction: 512 tasks in 512 groups" in out
    assert "  vae_roundtrip: 128 tasks" in out and "  prompt_tuning: 128 tasks" in out


def test_without_the_data_the_dry_run_names_the_folder_to_provide(tmp_path, capsys):
    for spec, expected in (("pie-bench.yaml", "mapping_file.json"), ("coco-reconstruction.yaml", "captions_val2017.json")):
        path = with_root(spec, tmp_path / "absent", tmp_path)
        assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / "absent") in err and expected in err


def test_list_shows_the_data_folder_as_required(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "pie_bench" in out and "coco" in out and "root (required)" in out and "PydanticUndefined" not in out


TEDBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "tedbench"
TEDBENCH_SPECS = sorted(p.name for p in CONFIGS.glob("*.yaml") if "tedbench" in p.read_text())


@pytest.mark.parametrize("spec", TEDBENCH_SPECS)
def test_tedbench_specs_plan_every_pair_with_a_local_copy(spec, tmp_path, capsys):
    """The TEdBench specs (download: true) plan on a local copy: every method inverts each of the
    100 pairs x seeds, once per distinct invert point (several for a grid of inversions)."""
    if not (TEDBENCH / "input_list.json").is_file():
        pytest.skip(f"the shared TEdBench copy is not at {TEDBENCH}")
    raw = yaml.safe_load((CONFIGS / spec).read_text())
    params = raw["datasets"][0]["params"]
    params.pop("download", None)
    params["root"] = str(TEDBENCH)
    path = tmp_path / spec
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    seeds = len(raw.get("seeds", [0]))
    for method in raw["methods"]:
        groups = re.search(rf"  {method['name']}: \d+ tasks, (\d+) groups", out)
        assert groups and int(groups[1]) > 0 and int(groups[1]) % (100 * seeds) == 0, out


@pytest.mark.parametrize(("spec", "method"), [("pie-bench-instruct-pix2pix.yaml", "instruct_pix2pix"),
                                              ("pie-bench-magicbrush.yaml", "magicbrush"),
                                              ("pie-bench-qwen-image-edit.yaml", "qwen_image_edit")])
def test_pie_bench_instruction_specs_plan_one_group_per_image(spec, method, tmp_path, capsys):
    """No inversion: one group per image, the five image-guidance points of the trade-off curve in it."""
    path = with_root(spec, pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{path.stem}: 15 tasks in 3 groups" in out
    assert f"  {method}: 15 tasks, 3 groups" in out


def test_pie_bench_inpaint_spec_plans_one_group_per_image(tmp_path, capsys):
    """PIE-Bench's own masks (invert params), one group per image, the two strengths in it."""
    path = with_root("pie-bench-inpaint.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-inpaint: 6 tasks in 3 groups" in out
    assert "  inpaint: 6 tasks, 3 groups" in out


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pie-bench-flowedit.yaml", ["vae_roundtrip: 6 tasks, 6 groups", "flowedit: 12 tasks, 6 groups",
                                     "flow_inversion: 6 tasks, 6 groups"]),
        ("pie-bench-rf.yaml", ["vae_roundtrip: 3 tasks, 3 groups", "rf_inversion: 3 tasks, 3 groups",
                               "rf_solver: 3 tasks, 3 groups", "fireflow: 3 tasks, 3 groups",
                               "flow_inversion: 3 tasks, 3 groups"]),
    ],
)  # fmt: skip
def test_pie_bench_flow_specs_plan_every_method_on_every_image(spec, expected, tmp_path, capsys):
    """The rectified-flow specs (FireFlow Table 4's rows): every method once per image and backbone."""
    path = with_root(spec, pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in expected:
        assert f"  {line}" in out, out


def test_pie_bench_controlnet_spec_plans_one_group_per_image(tmp_path, capsys):
    """No inversion: one group per image (the condition and noise), 2 step counts x 4 scales in it."""
    path = with_root("pie-bench-controlnet.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-controlnet: 24 tasks in 3 groups" in out
    assert "  controlnet: 24 tasks, 3 groups" in out


def test_pie_bench_clip_editing_spec_plans_both_methods(tmp_path, capsys):
    """Text2Live: one group per image (its layer), two opacities in it; DiffusionCLIP: one group per
    (image, t0), one edit point in each."""
    path = with_root("pie-bench-clip-editing.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-clip-editing: 12 tasks in 9 groups" in out
    assert "  text2live: 6 tasks, 3 groups" in out
    assert "  diffusion_clip: 6 tasks, 6 groups" in out
def test_pie_bench_t2i_adapter_spec_plans_one_group_per_image(tmp_path, capsys):
    """No inversion: one group per image (the condition and noise), 3 scales x 2 step fractions in it."""
    path = with_root("pie-bench-t2i-adapter.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-t2i-adapter: 18 tasks in 3 groups" in out
    assert "  t2i_adapter: 18 tasks, 3 groups" in out


def test_pie_bench_cyclenet_spec_plans_one_group_per_image(tmp_path, capsys):
    """The input's latent and condition once per image, the three strengths in its group."""
    path = with_root("pie-bench-cyclenet.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-cyclenet: 9 tasks in 3 groups" in out
    assert "  cyclenet: 9 tasks, 3 groups" in out
def test_pie_bench_blended_diffusion_spec_plans_one_group_per_image(tmp_path, capsys):
    """No inversion: one group per image (its mask), 3 CLIP lambdas x 2 background modes in it."""
    path = with_root("pie-bench-blended-diffusion.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-blended-diffusion: 18 tasks in 3 groups" in out
    assert "  blended_diffusion: 18 tasks, 3 groups" in out


def test_pie_bench_p_plus_spec_plans_one_group_per_image_and_inversion(tmp_path, capsys):
    """P+ and textual inversion: two token inversions per image, 3 layer choices x 2 strengths each."""
    path = with_root("pie-bench-p-plus.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pie-bench-p-plus: 36 tasks in 6 groups" in out
    assert "  p_plus: 36 tasks, 6 groups" in out


def test_pie_bench_instruction_editors_spec_plans_one_group_per_image(tmp_path, capsys):
    """FLUX.1 Kontext: no inversion, one group per image (its context latents and noise), the four
    guidance points in it."""
    path = with_root("pie-bench-instruction-editors.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  flux_kontext: 12 tasks, 3 groups" in out, out


def test_pie_bench_instruct_pix2pix_sdxl_spec_plans_one_group_per_image(tmp_path, capsys):
    """InstructPix2Pix on SDXL: text x image guidance (2 x 5 points) in one group per image."""
    path = with_root("pie-bench-instruct-pix2pix-sdxl.yaml", pie_folder(tmp_path / "pie", 3), tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert "  instruct_pix2pix_sdxl: 30 tasks, 3 groups" in capsys.readouterr().out
