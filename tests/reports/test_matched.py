"""The matched-fidelity comparison (reports/matched.py) on synthetic curves with known differences."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from editsweep.bench.spec import SpecError, load_matched_options
from editsweep.reports.aggregate import aggregate
from editsweep.reports.matched import (
    MatchedOptions,
    holm,
    interpolate,
    matched_comparison,
    matched_markdown,
)
from editsweep.reports.report import ReportError, build_report

GUIDANCE = (1.0, 2.0, 3.0, 4.0)  # LPIPS means 0.05, 0.15, 0.25, 0.35


def curve_rows(
    row_maker,
    offsets: dict[str, float],
    n_samples: int = 30,
    n_seeds: int = 2,
    difficulty_sd: float = 0.03,
    noise_sd: float = 0.01,
    lpips_sd: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Methods on the same CLIP-T(LPIPS) line plus their offset, every method on the same samples.

    CLIP-T = 0.2 + 0.3 * LPIPS + offset + difficulty[sample] + noise: the per-sample difficulty is
    shared by every method (same inputs), the noise is independent per image.
    """
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, difficulty_sd, n_samples)
    rows = []
    for method, offset in offsets.items():
        for guidance in GUIDANCE:
            lpips = 0.1 * guidance - 0.05
            for sample in range(n_samples):
                for s in range(n_seeds):
                    scores = {
                        "lpips": lpips + rng.normal(0, lpips_sd),
                        "clip_t": 0.2 + 0.3 * lpips + offset + difficulty[sample] + rng.normal(0, noise_sd),
                    }
                    rows.append(row_maker(method, guidance, sample, s, scores))
    return pd.DataFrame(rows)


def pair(result, a: str, b: str) -> pd.DataFrame:
    return result.pairs[(result.pairs["a"] == a) & (result.pairs["b"] == b)].set_index("level")


def test_known_difference_is_found_and_no_difference_is_not(row_maker):
    """Acceptance (issue 14): B = A + 0.05 CLIP-T at every LPIPS; C = A with independent noise."""
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05, "c": 0.0}, lpips_sd=0.01)
    result = matched_comparison(rows, options=MatchedOptions(levels=(0.1, 0.2, 0.3)))
    ab, ac = pair(result, "a", "b"), pair(result, "a", "c")
    assert list(ab.index) == [0.1, 0.2, 0.3]
    assert np.allclose(ab["diff"], -0.05, atol=0.01)  # CLIP-T: higher is better, so A is worse
    assert (ab["ci_high"] < 0).all() and (ab["p_holm"] < 0.05).all()
    assert ((ac["ci_low"] < 0) & (ac["ci_high"] > 0)).all() and (ac["p_holm"] > 0.05).all()
    assert (result.pairs["not_reached"] == 0).all()


def test_pairing_matters(row_maker):
    """A small difference under a large shared per-sample difficulty: only the paired CI excludes 0."""
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.01}, n_samples=20, difficulty_sd=0.1, noise_sd=0.003)
    options = MatchedOptions(levels=(0.2,))
    paired = pair(matched_comparison(rows, options=options), "a", "b").loc[0.2]
    unpaired = pair(matched_comparison(rows, options=options, paired=False), "a", "b").loc[0.2]
    assert paired["diff"] == pytest.approx(unpaired["diff"]) == pytest.approx(-0.01, abs=0.002)
    assert paired["ci_high"] < 0 and paired["p_holm"] < 0.05
    assert unpaired["ci_low"] < 0 < unpaired["ci_high"]


def test_interpolation_is_exact_on_a_linear_curve(row_maker):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.1}, n_samples=3, n_seeds=1, difficulty_sd=0.0, noise_sd=0.0)
    result = matched_comparison(rows, options=MatchedOptions(levels=(0.05, 0.12, 0.3, 0.35), n_boot=200))
    values = result.values.set_index(["curve", "level"])
    for level in (0.05, 0.12, 0.3, 0.35):
        assert values.loc[("a", level), "value"] == pytest.approx(0.2 + 0.3 * level)
        assert values.loc[("b", level), "value"] == pytest.approx(0.3 + 0.3 * level)
    # No noise: every resample gives the same curve, so the intervals have zero width.
    assert np.allclose(values["ci_low"], values["value"]) and np.allclose(values["ci_high"], values["value"])
    assert np.allclose(pair(result, "a", "b")["diff"], -0.1)
    # Points are read in fidelity order whatever order the sweep parameter gives them.
    assert interpolate([0.4, 0.1, 0.2], [0.5, 0.2, 0.3], [0.15, 0.3])[0] == pytest.approx([0.25, 0.4])


def test_levels_outside_a_curve_are_not_reached(row_maker):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05}, n_samples=5, n_seeds=1)
    short = (rows["method"] == "b") & (rows["edit_params"].str.contains('"guidance": 4.0'))
    rows = rows[~short]  # b's curve now ends at LPIPS 0.25
    result = matched_comparison(rows, options=MatchedOptions(levels=(0.01, 0.2, 0.3, 0.5), n_boot=200))
    values = result.values.set_index(["curve", "level"])["value"]
    assert np.isnan(values[("a", 0.01)]) and np.isnan(values[("a", 0.5)]) and np.isfinite(values[("a", 0.3)])
    assert np.isnan(values[("b", 0.3)]) and np.isfinite(values[("b", 0.2)])
    ab = pair(result, "a", "b")
    assert ab["diff"].isna().tolist() == [True, False, True, True]
    assert ab["p_holm"].isna().tolist() == [True, False, True, True]
    text = matched_markdown(result)
    assert "| 0.3 | a | b | not reached | – | – | 0.2" in text
    assert "| 0.5 | a | b | not reached | – | – | not reached | not reached |" in text


def test_resamples_that_miss_a_level_are_counted(row_maker):
    """A level at the end of a curve's range is missed by about half the resamples; the share shows."""
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05}, n_samples=20, lpips_sd=0.02)
    top = rows.loc[rows["method"].eq("a") & rows["edit_params"].str.contains('"guidance": 4.0')]
    level = float(np.mean([s["lpips"] for s in top["scores"]])) - 1e-9
    result = matched_comparison(rows, options=MatchedOptions(levels=(level,), n_boot=400))
    missed = result.values.set_index("curve").loc["a", "not_reached"]
    assert 0.2 < missed < 0.8
    assert f"(n.r. {missed:.0%})" in matched_markdown(result)


def test_holm_adjustment():
    adjusted = holm([0.01, 0.04, 0.03, np.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adjusted[3])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_lower_is_better_metric_flips_the_sign(row_maker):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05}, n_samples=10, noise_sd=0.0, difficulty_sd=0.0)
    rows["scores"] = [{"psnr": -s["lpips"], "lpips": s["clip_t"]} for s in rows["scores"]]
    result = matched_comparison(rows, options=MatchedOptions(fidelity="psnr", metrics=("lpips",), levels=(-0.2,)))
    assert pair(result, "a", "b").loc[-0.2, "diff"] == pytest.approx(0.05)  # a has the lower LPIPS: better


def test_set_level_metric_is_read_off_point_means_without_ci(row_maker):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05}, n_samples=4, n_seeds=1, noise_sd=0.0, difficulty_sd=0.0)
    summary = aggregate(rows.assign(error=None), n_boot=50)
    summary["csfid_mean"] = 100 - 100 * summary["lpips_mean"] - 10 * summary["method"].eq("b")
    result = matched_comparison(rows, summary, MatchedOptions(metrics=("clip_t", "csfid"), levels=(0.2,)))
    csfid = pair(result, "a", "b").query("metric == 'csfid'").loc[0.2]
    assert csfid["diff"] == pytest.approx(-10.0)  # lower CSFID is better: b is better by 10
    assert np.isnan(csfid["ci_low"]) and np.isnan(csfid["p_holm"])
    assert "CSFID is a set-level metric" in matched_markdown(result)


def test_default_levels_are_quartiles_of_the_shared_range(row_maker):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05}, n_samples=4, n_seeds=1, noise_sd=0.0)
    rows = rows[~(rows["method"].eq("b") & rows["edit_params"].str.contains('"guidance": 1.0'))]
    result = matched_comparison(rows, options=MatchedOptions(n_boot=100))
    assert result.levels["toy"] == pytest.approx([0.2, 0.25, 0.3])  # shared range 0.15 to 0.35
    assert "quartiles of the range every method covers" in matched_markdown(result)


def test_report_options_from_the_spec_are_validated():
    assert load_matched_options({}).levels is None
    assert load_matched_options({"report": {"matched": {"levels": [0.3, 0.1]}}}).levels == [0.1, 0.3]
    with pytest.raises(SpecError, match=r"report\.matched\.levels: .*distinct finite"):
        load_matched_options({"report": {"matched": {"levels": [0.1, 0.1]}}})
    with pytest.raises(SpecError, match="fidelity metric 'lpips' cannot also be"):
        load_matched_options({"report": {"matched": {"metrics": ["clip_t", "lpips"]}}})


def test_report_writes_the_matched_files(run_factory, row_maker, mlflow_db_template):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05, "c": 0.0}, n_samples=6, n_seeds=1).to_dict("records")
    store = run_factory(rows, images=False)
    spec = {"name": "matched", "report": {"matched": {"levels": [0.1, 0.2], "n_boot": 200}}}
    store.write_json("manifests/20260101T000000Z-abc123.json", {"spec": spec})
    shutil.copy(mlflow_db_template, store.path("mlflow.db"))
    result = build_report(store.root)
    assert [p.name for p in result.matched_files] == ["matched.md", "matched.csv", "matched.png"]
    text = result.matched_files[0].read_text()
    assert "## toy: CLIP-T ↑ at matched LPIPS" in text and "Levels: 0.1, 0.2 (from the spec)." in text
    table = pd.read_csv(result.matched_files[1])
    assert len(table) == 3 * 2 and {"diff", "ci_low", "ci_high", "p_holm", "value_a", "value_b"} <= set(table)
    assert result.matched_files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    store.write_json("manifests/20260102T000000Z-def456.json", {"spec": {**spec, "report": {"matched": {"ci": 2}}}})
    with pytest.raises(ReportError, match=r"report\.matched\.ci"):
        build_report(store.root)


def test_one_method_gives_no_comparison_and_no_note(run_factory, row_maker, mlflow_db_template):
    rows = curve_rows(row_maker, {"a": 0.0}, n_samples=2, n_seeds=1).to_dict("records")
    store = run_factory(rows, images=False)
    shutil.copy(mlflow_db_template, store.path("mlflow.db"))
    result = build_report(store.root)
    assert result.matched_files == [] and not (result.report_dir / "matched.md").exists()
    assert not any("matched" in note for note in result.notes)


def test_difference_bands_follow_the_paired_differences(row_maker):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05, "c": 0.0}, n_samples=20, lpips_sd=0.01)
    bands = matched_comparison(rows, options=MatchedOptions(levels=(0.2,), n_boot=300)).diff_bands
    assert set(bands["reference"]) == {"a"} and set(bands["curve"]) == {"b", "c"}
    b, c = bands[bands["curve"] == "b"], bands[bands["curve"] == "c"]
    assert (b["low"] > 0).all() and np.allclose(b["diff"], 0.05, atol=0.01)  # b is better everywhere
    assert (c["low"] < 0).mean() > 0.9 and (c["high"] > 0).mean() > 0.9


def test_methods_on_different_samples_are_noted(row_maker):
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05}, n_samples=4, n_seeds=1)
    rows = rows[~(rows["method"].eq("b") & rows["sample_id"].eq("s3"))]
    result = matched_comparison(rows, options=MatchedOptions(levels=(0.2,), n_boot=100))
    assert result.notes == ["toy: methods were scored on different samples (a: 4, b: 3 of 4); pairing is partial"]
    assert "pairing is partial" in matched_markdown(result)


def test_a_single_point_method_is_left_out_with_a_note(row_maker):
    """`copy` (one sweep point) has no curve to read: it is left out, not reported "not reached"."""
    rows = curve_rows(row_maker, {"a": 0.0, "b": 0.05}, n_samples=4, n_seeds=1)
    copy = [row_maker("copy", 0.0, s, 0, {"lpips": 0.0, "clip_t": 0.1}) for s in range(4)]
    result = matched_comparison(pd.concat([rows, pd.DataFrame(copy)], ignore_index=True))
    assert set(result.pairs["a"]) | set(result.pairs["b"]) == {"a", "b"}
    assert "toy: copy left out of the matched comparison (one sweep point, no curve)" in result.notes
