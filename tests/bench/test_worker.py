from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from pathlib import Path

from editsweep.bench.plan import plan
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker


def run_units(spec, run_dir):
    worker = SweepWorker(spec, str(run_dir), "run-test")
    tasks, units = plan(spec, RunStore(str(run_dir)).completed_task_keys())
    reports = [worker.process(u) for u in units]
    for report in reports:  # as the driver does
        RunStore(str(run_dir)).write_rows(report.rows)
    return tasks, reports, RunStore(str(run_dir)).read_results()


def test_one_inversion_per_group_for_a_sweep_of_edit_points(make_spec, tmp_path, plugin):
    spec = make_spec(
        [{"name": "counting_ddim", "invert": {"steps": 3}, "edit": {"guidance": [1.0, 2.0, 4.0, 7.5]}}],
        n=3,
        seeds=[0, 1],
        execution={"batch_size": 2, "edit_batch_size": 4},
    )
    plugin.INVERTED.clear()
    tasks, reports, rows = run_units(spec, tmp_path)
    assert len(tasks) == 3 * 2 * 4
    # 6 groups (3 samples x 2 seeds): each sample inverted exactly once per seed, never per edit point.
    assert sorted(plugin.INVERTED) == sorted(["syn-0000", "syn-0001", "syn-0002"] * 2)
    assert sum(r.invert_calls for r in reports) == 3  # groups batched 2 by 2
    assert (rows["status"] == "ok").all() and len(rows) == 24
    assert rows["scores"].map(lambda s: "psnr" in s).all()
    assert rows["input_path"].notna().all() and rows["image_path"].notna().all()


def test_methods_that_edit_points_together_get_every_point_in_one_call(make_spec, tmp_path, plugin):
    """Fine-tuning methods fine-tune once per edit call: `edit_batch_size` must not split a group."""
    points = {"guidance": [1.0, 2.0, 4.0, 7.5]}
    spec = make_spec(
        [{"name": "together_ddim", "invert": {"steps": 2}, "edit": points}, {"name": "counting_ddim", "invert": {"steps": 2}, "edit": points}],
        n=2,
        execution={"batch_size": 2, "edit_batch_size": 2},
    )
    plugin.EDIT_CALLS.clear()
    _, reports, rows = run_units(spec, tmp_path)
    assert plugin.EDIT_CALLS == [4] and (rows["status"] == "ok").all() and len(rows) == 16
    assert sum(r.edit_calls for r in reports) == 1 + 4  # counting_ddim: 2 samples x 1 point per call


def test_rerun_skips_finished_tasks(make_spec, tmp_path, plugin):
    spec = make_spec([{"name": "counting_ddim", "invert": {"steps": 2}, "edit": {"guidance": [1.0, 3.0]}}], n=2)
    run_units(spec, tmp_path)
    plugin.INVERTED.clear()
    tasks, reports, rows = run_units(spec, tmp_path)
    assert reports == [] and plugin.INVERTED == []
    assert len(rows) == len(tasks) == 4


def test_a_failing_sample_becomes_error_rows_and_its_batch_mates_finish(make_spec, tmp_path):
    spec = make_spec(
        [{"name": "faulty", "invert": {"fault": "raise", "samples": ["syn-0001"]}}],
        n=4,
        execution={"batch_size": 4},
    )
    _, _, rows = run_units(spec, tmp_path)
    by_sample = rows.set_index("sample_id")
    assert by_sample.loc["syn-0001", "status"] == "error"
    assert "injected failure" in by_sample.loc["syn-0001", "error"]
    assert (by_sample.drop("syn-0001")["status"] == "ok").all()


def test_nan_output_becomes_an_error_row(make_spec, tmp_path):
    spec = make_spec([{"name": "faulty", "invert": {"fault": "nan", "samples": ["syn-0002"]}}], n=3)
    _, _, rows = run_units(spec, tmp_path)
    by_sample = rows.set_index("sample_id")
    assert "NaN" in by_sample.loc["syn-0002", "error"]
    assert by_sample.loc["syn-0000", "status"] == "ok"


def test_corrupt_image_becomes_an_error_row(tmp_path):
    from editsweep.bench.spec import load_spec

    root = tmp_path / "tedbench"
    (root / "originals").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (80, 80), (200, 10, 10)).save(root / "originals" / "good.png")
    (root / "originals" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "input_list.json").write_text(
        '[{"img_name": "good.png", "target_text": "a blue square."},'
        ' {"img_name": "broken.jpeg", "target_text": "a cat."}]'
    )
    spec = load_spec(
        {
            "name": "c",
            "datasets": [{"name": "tedbench", "params": {"root": str(root)}}],
            "methods": [{"name": "copy"}],
            "metrics": {"psnr": {}},
        }
    )
    _, _, rows = run_units(spec, tmp_path / "run")
    by_sample = rows.set_index("sample_id")
    assert by_sample.loc["000-good.png", "status"] == "ok"
    assert by_sample.loc["001-broken.jpeg", "status"] == "error"
    assert "broken.jpeg" in by_sample.loc["001-broken.jpeg", "error"]


def test_rows_record_weights_and_timing(make_spec, tmp_path):
    spec = make_spec([{"name": "copy"}], n=2)
    _, _, rows = run_units(spec, tmp_path)
    assert rows["random_weights"].all()  # the tiny backbone is random
    assert rows["weights"].str.contains("backbone=tiny:random").all()
    assert (rows[["invert_s", "edit_s", "score_s"]] >= 0).all().all()
    assert Path(RunStore(str(tmp_path)).path(rows["image_path"][0])).is_file()


def test_copy_scores_the_fidelity_ceiling(make_spec, tmp_path):
    spec = make_spec(
        [{"name": "copy"}],
        n=3,
        metrics={"lpips": {"net": "alex", "weights": "random"}, "psnr": {}, "ssim": {}},
        allow_random_weights=True,
    )
    _, _, rows = run_units(spec, tmp_path)
    scores = rows["scores"].apply(pd.Series)
    assert (scores["lpips"].abs() < 1e-6).all()
    assert np.isinf(scores["psnr"]).all() and (scores["psnr"] > 0).all()
    assert np.allclose(scores["ssim"], 1.0, atol=1e-4)
    assert rows["weights"].str.contains("lpips=alex:random").all()


def test_default_metrics_need_pretrained_weights_and_say_which(tmp_path, monkeypatch):
    from editsweep.bench.metrics.base import ScorerWeightsError
    from editsweep.bench.spec import load_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = load_spec({"name": "d", "datasets": [{"name": "synthetic"}], "methods": [{"name": "copy"}]})
    assert set(spec.metrics) == {"clip_t", "lpips", "psnr", "ssim"}
    with pytest.raises(ScorerWeightsError, match="ViT-L-14"):
        SweepWorker(spec, str(tmp_path / "run"), "r")


def test_tedbench_sweep_inverts_once_per_image_and_seed(tmp_path, monkeypatch):
    """4 eta values (Prompt Tuning) and 3 cross-replace values (Null-text): one inversion each."""
    from collections import Counter

    from editsweep.bench.spec import load_spec
    from editsweep.methods.null_text import NullTextInversion
    from editsweep.methods.prompt_tuning import PromptTuning

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "tedbench"
    if not (root / "input_list.json").is_file():
        pytest.skip(f"the shared TEdBench copy is not at {root}")
    inverted: Counter = Counter()
    for cls in (NullTextInversion, PromptTuning):
        original = cls.invert

        def counting(self, backbone, samples, params, generators, seeds=None, _original=original):
            inverted.update((self.name, s.id) for s in samples)
            return _original(self, backbone, samples, params, generators, seeds)

        monkeypatch.setattr(cls, "invert", counting)
    spec = load_spec(
        {
            "name": "ted",
            "datasets": [{"name": "tedbench", "params": {"root": str(root), "limit": 3}}],
            "seeds": [0, 1],
            "methods": [
                {"name": "prompt_tuning", "invert": {"steps": 4}, "edit": {"eta": [0.0, 0.5, 0.9, 1.0]}},
                {
                    "name": "null_text",
                    "invert": {"steps": 4, "inner_steps": 2},
                    "edit": {"cross_replace": [0.2, 0.5, 0.8]},
                },
            ],
            "metrics": {"psnr": {}},
            "execution": {"batch_size": 3},
        }
    )
    tasks, reports, rows = run_units(spec, tmp_path)
    assert len(tasks) == 3 * 2 * (4 + 3)
    assert (rows["status"] == "ok").all(), rows["error"].dropna().tolist()
    # Each (method, image) inverted once per seed: 2 seeds, never once per edit point.
    assert set(inverted.values()) == {2} and len(inverted) == 2 * 3
    assert rows["source_prompt"].isna().all()  # TEdBench has no source prompts
    # The sample's scalar meta travels with each row, for reports that group by it.
    assert all(dict(labels)["img_name"].endswith(".png") for labels in rows["labels"])


def test_out_of_memory_halves_the_edit_batch_before_giving_up(make_spec, tmp_path):
    spec = make_spec(
        [{"name": "memory_hungry", "invert": {"max_points": [3, 0]}, "edit": {"k": list(range(6))}}],
        n=1,
        execution={"edit_batch_size": 8, "batch_size": 1},
    )
    _, reports, rows = run_units(spec, tmp_path)
    limit = rows["invert_params"].str.extract(r'"max_points":(\d+)')[0]
    fits, never = rows[limit == "3"], rows[limit == "0"]
    assert len(fits) == len(never) == 6
    assert (fits["status"] == "ok").all()  # 6 points -> OOM -> 3 + 3
    assert never["error"].str.contains("OutOfMemoryError").all()  # 6 -> 3 -> 1 -> still too many: error rows
    assert never["error"].str.contains("edit_batch_size").all()
    assert sum(r.oom_retries for r in reports) == 1 + 2


def test_a_failing_edit_point_is_an_error_row_and_the_group_goes_on(make_spec, tmp_path):
    spec = make_spec([{"name": "point_fault", "edit": {"k": list(range(6))}}], n=2, execution={"batch_size": 2})
    _, reports, rows = run_units(spec, tmp_path)
    k = rows["edit_params"].str.extract(r'"k":(\d+)')[0]
    assert (rows.loc[k == "3", "status"] == "error").all() and len(rows[k == "3"]) == 2
    assert rows.loc[k == "3", "error"].str.contains("injected failure at k=3").all()
    assert (rows.loc[k != "3", "status"] == "ok").all() and len(rows[k != "3"]) == 10
    # Each sample of the batch is inverted once more, alone, to find which of them fails at k=3 (the
    # Method API does not say which axis of a state is the batch's: null_text's is (steps, B, ...)).
    assert sum(r.invert_calls for r in reports) == 1 + 2


SCORER_PLUGIN = str(Path(__file__).parent / "plugins" / "faulty_scorers.py")


def _keys(tasks, **match):
    """Task keys of the tasks whose attributes / edit parameters match."""
    import json

    def hit(t):
        params = json.loads(t.edit_params)
        return all(getattr(t, k, params.get(k)) == v for k, v in match.items())

    return {t.task_key for t in tasks if hit(t)}


@pytest.mark.parametrize(
    "output, message",
    [
        ("extra_image", r"misbehaving\.edit returned tensor 0 of shape \(5, 3, (\d+), \1\); expected \(4, 3, \1, \1\)"),
        ("extra_tensor", r"misbehaving\.edit returned 2 tensors for 1 edit point; expected one \(4, 3, \d+, \d+\) tensor"),
        ("half_size", r"shape \(4, 3, (\d+), \1\); expected \(4, 3, \d+, \d+\)"),
        ("scale_255", r"pixel values in \[[\d.]+, [\d.]+\]; expected \[0, 1\]: return images in \[0, 1\], not \[0, 255\]"),
    ],
)
def test_an_edit_breaking_the_output_contract_fails_its_tasks_and_says_why(
    make_spec, tmp_path, run_invariants, output, message
):
    spec = make_spec([{"name": "misbehaving", "invert": {"output": output}}, {"name": "copy"}], n=4)
    tasks, _, _ = run_units(spec, tmp_path)
    latest = run_invariants(tmp_path, _keys(tasks, method="copy"), _keys(tasks, method="misbehaving"))
    errors = latest.loc[latest["method"] == "misbehaving", "error"]
    assert len(errors) == 4 and errors.str.contains(message).all(), errors.iloc[0]


def test_pixels_just_outside_0_1_are_clamped_before_scoring_and_storing(make_spec, tmp_path):
    spec = make_spec(
        [{"name": "misbehaving", "invert": {"output": "overshoot"}}],
        n=2,
        imports=[str(Path(__file__).parent / "plugins" / "faulty_methods.py"), SCORER_PLUGIN],
        metrics={"flaky": {}},
    )
    _, _, rows = run_units(spec, tmp_path)
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    assert (rows["scores"].map(lambda s: s["max_pixel"]) == 1.0).all()  # 1.0009 as returned


def _flaky_spec(make_spec, n, points, flaky, **execution):
    return make_spec(
        [{"name": "edit_fault", "edit": {"k": list(range(points))}}],
        n=n,
        imports=[str(Path(__file__).parent / "plugins" / "faulty_methods.py"), SCORER_PLUGIN],
        metrics={"flaky": flaky, "psnr": {}},
        execution=execution,
    )


def test_a_scorer_failing_on_its_second_call_fails_only_the_image_it_scored(make_spec, tmp_path, run_invariants):
    spec = _flaky_spec(make_spec, 1, 3, {"fail_calls": [2]}, batch_size=1, edit_batch_size=1)
    tasks, _, _ = run_units(spec, tmp_path)
    latest = run_invariants(tmp_path, _keys(tasks) - _keys(tasks, k=1), _keys(tasks, k=1))
    assert latest.loc[list(_keys(tasks, k=1)), "error"].str.contains("injected scorer failure on call 2").all()


def test_a_scorer_failing_once_on_a_batch_is_retried_sample_by_sample(make_spec, tmp_path, run_invariants):
    """The failing chunk's images are scored again one sample at a time: nothing re-inverted or re-edited."""
    spec = _flaky_spec(make_spec, 4, 2, {"fail_calls": [2]}, batch_size=4, edit_batch_size=4)
    tasks, reports, _ = run_units(spec, tmp_path)
    run_invariants(tmp_path, _keys(tasks))
    assert sum(r.invert_calls for r in reports) == 1 and sum(r.edit_calls for r in reports) == 2


def test_a_scorer_failing_on_one_sample_fails_only_that_sample(make_spec, tmp_path, run_invariants):
    spec = _flaky_spec(make_spec, 4, 2, {"fail_samples": ["syn-0002"]}, batch_size=4, edit_batch_size=8)
    tasks, reports, _ = run_units(spec, tmp_path)
    culprits = _keys(tasks, sample_id="syn-0002")
    latest = run_invariants(tmp_path, _keys(tasks) - culprits, culprits)
    assert latest.loc[list(culprits), "error"].str.contains(r"injected scorer failure on \['syn-0002'\]").all()
    assert sum(r.invert_calls for r in reports) == 1 and sum(r.edit_calls for r in reports) == 1


@pytest.mark.parametrize(
    "at_k, others, culprit",
    [
        # How often each point k = 0..3 of a sample is asked for: once in its batch; a failing batch
        # chunk (k 2-3, or every chunk) again for each sample alone; the culprit then point by point.
        (2, [1, 1, 2, 2], [1, 1, 3, 3]),
        (-1, [2, 2, 2, 2], [3, 3, 3, 3]),
    ],
)
def test_a_method_raising_for_one_sample_of_a_batch_fails_only_that_sample(
    make_spec, tmp_path, run_invariants, plugin, at_k, others, culprit
):
    spec = make_spec(
        [{"name": "edit_fault", "invert": {"sample": "syn-0001", "at_k": at_k}, "edit": {"k": [0, 1, 2, 3]}}],
        n=4,
        execution={"batch_size": 4, "edit_batch_size": 8},  # edit chunks of 2 points: k 0-1, then k 2-3
    )
    plugin.EDIT_LOG.clear()
    tasks, _, _ = run_units(spec, tmp_path)
    culprits = {key for key in _keys(tasks, sample_id="syn-0001") if at_k == -1 or key in _keys(tasks, k=2)}
    latest = run_invariants(tmp_path, _keys(tasks) - culprits, culprits)
    assert latest.loc[list(culprits), "error"].str.contains(r"injected edit failure on \['syn-0001'\]").all()
    # Edits already made are kept, never redone: a point is asked for again only to isolate a failure.
    asked = Counter((s, k) for samples, ks in plugin.EDIT_LOG for s in samples for k in ks)
    for sample in ["syn-0000", "syn-0002", "syn-0003"]:
        assert [asked[(sample, k)] for k in range(4)] == others
    assert [asked[("syn-0001", k)] for k in range(4)] == culprit


def test_an_image_that_cannot_be_stored_is_an_error_row_and_leaves_no_file(
    make_spec, tmp_path, run_invariants, monkeypatch
):
    spec = make_spec([{"name": "copy"}], n=4, execution={"batch_size": 4})
    tasks, _ = plan(spec, set())
    culprit = next(t.task_key for t in tasks if t.sample_id == "syn-0003")
    original = RunStore.write_image

    def write_image(self, task_key, image):
        if task_key == culprit:
            raise OSError("injected write failure")
        return original(self, task_key, image)

    monkeypatch.setattr(RunStore, "write_image", write_image)
    run_units(spec, tmp_path)
    latest = run_invariants(tmp_path, {t.task_key for t in tasks} - {culprit}, {culprit})
    assert "injected write failure" in latest.loc[culprit, "error"]


@pytest.mark.parametrize(
    "edited, message",
    [
        (torch.zeros(2, 3, 8, 8), r"m\.edit returned a Tensor; expected one \(2, 3, 8, 8\) tensor per edit point"),
        ([torch.zeros(2, 3, 8, 8), "x"], r"returned a str as item 1"),
        ([torch.zeros(2, 3, 8, 8, dtype=torch.uint8)] * 2, r"tensor 0 of dtype torch.uint8; expected floats"),
        ([torch.zeros(2, 3, 8, 8) - 1] * 2, r"in \[-1, -1\]; expected \[0, 1\]: .*not \[-1, 1\]"),
        ([torch.zeros(2, 3, 8, 8) + 1.01] * 2, r"in \[1.01, 1.01\]; expected \[0, 1\]: .*clamp them"),
    ],
)
def test_check_edit_output_names_what_came_back(edited, message):
    from editsweep.bench.worker import OutputContractError, check_edit_output

    with pytest.raises(OutputContractError, match=message):
        check_edit_output("m", edited, n_points=2, batch=2, size=(8, 8))


def test_check_edit_output_clamps_within_tolerance_and_keeps_nan_for_its_image():
    from editsweep.bench.worker import check_edit_output

    first = torch.full((2, 3, 4, 4), 1.0009)
    first[1] = torch.nan
    out = check_edit_output("m", [first, torch.full((2, 3, 4, 4), -0.0009)], n_points=2, batch=2, size=(4, 4))
    assert out.shape == (4, 3, 4, 4) and torch.isnan(out[1]).all()
    assert (out[0] == 1).all() and (out[2:] == 0).all()


def test_the_worker_lays_out_its_backbone_by_the_memory_options(make_spec, tmp_path, plugin):
    """The options of the backbone's spec entry are applied after loading and are part of what the
    worker holds (a unit of another entry reloads); the info that goes to the manifest records them."""
    from diffusers.models.attention_processor import SlicedAttnProcessor

    memory = {"name": "tiny", "attention_slicing": "auto", "vae_slicing": True, "offload_text_encoders": True}
    spec = make_spec([{"name": "counting_ddim", "invert": {"steps": 2}}], n=1, backbone=memory)
    worker = SweepWorker(spec, str(tmp_path), "run-test")
    assert all(isinstance(p, SlicedAttnProcessor) for p in worker.backbone.unet.attn_processors.values())
    assert worker.backbone.vae.use_slicing
    assert worker.info()["memory"] == {"offload_text_encoders": True, "attention_slicing": "auto", "vae_slicing": True}
    assert worker.backbone_key == ("tiny", "float32", spec.backbone.memory())
    _, units = plan(spec)
    reports = [worker.process(u) for u in units]
    assert all(r["status"] == "ok" for rep in reports for r in rep.rows) and sum(r.backbone_loads for r in reports) == 0
