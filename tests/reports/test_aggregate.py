"""Sweep-point aggregation: counts, bootstrap CIs, non-finite scores, labels, Pareto front."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from editsweep.bench.store import SCHEMA
from editsweep.core.metrics import MetricInfo
from editsweep.reports.aggregate import aggregate, bootstrap_mean_ci, label_points, metric_info, pareto_front


def _point(summary: pd.DataFrame, method: str, label: str) -> pd.Series:
    rows = summary[(summary["method"] == method) & (summary["label"] == label)]
    assert len(rows) == 1, summary[["method", "label"]]
    return rows.iloc[0]


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as `read_results` returns them: every SCHEMA column, missing ones null."""
    return pd.DataFrame(rows).reindex(columns=SCHEMA.names)


def test_one_row_per_sweep_point_with_counts(rows_factory):
    summary = aggregate(_frame(rows_factory(n_samples=4, n_seeds=2)))
    assert len(summary) == 6
    assert summary[["n", "n_samples", "n_seeds"]].drop_duplicates().values.tolist() == [[8, 4, 2]]
    failed = _point(summary, "nti", "guidance=12")
    assert failed["n_error"] == 1 and failed["top_error"] == "RuntimeError: out of memory"
    assert summary["n_error"].sum() == 1
    assert summary["random_weights"].all()
    assert summary.attrs["metrics"] == ["clip_t", "lpips", "psnr"]


def test_points_sorted_numerically_by_varying_param(rows_factory):
    summary = aggregate(_frame(rows_factory()))
    assert summary.loc[summary["method"] == "ddim", "label"].tolist() == ["guidance=3", "guidance=7.5", "guidance=12"]


def test_ci_contains_mean_and_shrinks_with_more_images(row_maker):
    rng = np.random.default_rng(0)
    rows = [
        row_maker(method, 7.5, i, 0, {"clip_t": float(v)})
        for method, n in (("small", 10), ("large", 1000))
        for i, v in enumerate(rng.normal(0.3, 0.05, n))
    ]
    summary = aggregate(_frame(rows)).set_index("method")
    for method in ("small", "large"):
        point = summary.loc[method]
        assert point["clip_t_ci_low"] < point["clip_t_mean"] < point["clip_t_ci_high"]
    width = summary["clip_t_ci_high"] - summary["clip_t_ci_low"]
    assert width["large"] < width["small"] / 4  # ~ 1/sqrt(100) of it, with slack


def test_bootstrap_ci_matches_normal_theory():
    values = np.random.default_rng(3).normal(0, 1, 400)
    low, high = bootstrap_mean_ci(values, n_boot=4000, ci=0.95, rng=np.random.default_rng(0))
    expected = 2 * 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert (high - low) == pytest.approx(expected, rel=0.1)


def test_constant_metric_gives_zero_width_ci(row_maker):
    rows = [row_maker("m", 7.5, i, 0, {"ssim": 0.7}) for i in range(20)]
    point = aggregate(_frame(rows)).iloc[0]
    assert point["ssim_ci_low"] == point["ssim_mean"] == point["ssim_ci_high"]


def test_ci_is_seeded_and_independent_of_other_points(rows_factory, row_maker):
    rows = rows_factory()
    first, again = aggregate(_frame(rows), seed=1), aggregate(_frame(rows), seed=1)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["clip_t_ci_low"], aggregate(_frame(rows), seed=2)["clip_t_ci_low"])
    extra = [row_maker("other", 1.0, i, 0, {"clip_t": 0.1 * i}) for i in range(5)]
    more = aggregate(_frame(rows + extra), seed=1)
    pd.testing.assert_frame_equal(first, more[more["method"] != "other"].reset_index(drop=True))


def test_non_finite_scores_are_left_out_and_counted(row_maker):
    psnr = [20.0, 22.0, float("inf"), float("nan"), 24.0]
    rows = [row_maker("m", 7.5, i, 0, {"psnr": v, "clip_t": 0.3}) for i, v in enumerate(psnr)]
    rows.append(row_maker("m", 7.5, 9, 0, {"clip_t": 0.3}))  # psnr not scored at all
    point = aggregate(_frame(rows)).iloc[0]
    assert point["n"] == 6
    assert point["psnr_mean"] == pytest.approx(22.0)
    assert point["psnr_n"] == 3 and point["psnr_n_inf"] == 1
    assert 20.0 <= point["psnr_ci_low"] <= 22.0 <= point["psnr_ci_high"] <= 24.0
    assert point["clip_t_n"] == 6


def test_error_only_points_stay_visible(row_maker):
    rows = [row_maker("m", 7.5, i, 0, {"clip_t": 0.3}) for i in range(3)]
    rows += [row_maker("m", 12.0, i, 0, {}, status="error", error="boom") for i in range(2)]
    summary = aggregate(_frame(rows))
    failed = _point(summary, "m", "guidance=12")
    assert failed["n"] == 0 and failed["n_error"] == 2 and np.isnan(failed["clip_t_mean"])


def test_all_error_rows_give_points_without_metrics(row_maker):
    rows = [row_maker("m", g, 0, 0, {}, status="error", error="boom") for g in (3.0, 7.5)]
    summary = aggregate(_frame(rows))
    assert len(summary) == 2 and summary["n"].eq(0).all() and summary.attrs["metrics"] == []


def _points(method: str, invert: list[dict], edit: list[dict], backbone: str = "tiny") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": method,
            "dataset": "toy",
            "backbone": backbone,
            "invert_params": [json.dumps(p, sort_keys=True) for p in invert],
            "edit_params": [json.dumps(p, sort_keys=True) for p in edit],
        }
    )


def test_labels_name_only_what_varies_within_each_method():
    points = pd.concat(
        [
            _points("a", [{"steps": 50}] * 2, [{"guidance": 7.5, "steps": 50}, {"guidance": 12.0, "steps": 50}]),
            _points(
                "b", [{"steps": 10}, {"steps": 50}], [{"guidance": 7.5, "steps": 10}, {"guidance": 7.5, "steps": 50}]
            ),
            _points("c", [{"steps": 50}], [{"guidance": 7.5}]),
            _points("d", [{}], [{"mask": {"threshold": 0.5}}]),
            _points("d", [{}], [{"mask": {"threshold": 0.7}}], backbone="sd14"),
        ],
        ignore_index=True,
    )
    assert label_points(points).tolist() == [
        "guidance=7.5",
        "guidance=12",
        "invert.steps=10, edit.steps=10",
        "invert.steps=50, edit.steps=50",
        "default",
        "backbone=tiny, mask.threshold=0.5",
        "backbone=sd14, mask.threshold=0.7",
    ]


def test_pareto_front_of_known_points():
    points = pd.DataFrame(
        {"lpips": [0.1, 0.2, 0.3, 0.25, 0.4, 0.2, 0.5], "clip_t": [0.20, 0.25, 0.30, 0.22, 0.30, 0.25, np.nan]},
        index=list("abcdefg"),
    )
    # d is beaten by b; e by c (same clip_t, worse lpips); b and f are identical and both stay; g has no clip_t.
    assert pareto_front(points, "lpips", "clip_t").index.tolist() == ["a", "b", "f", "c"]
    # LPIPS taken as higher-better: e has the top CLIP-T and the top LPIPS, so it beats every other point.
    assert pareto_front(points, "lpips", "clip_t", x_lower_better=False).index.tolist() == ["e"]


def test_metric_directions():
    assert metric_info("lpips").higher_is_better is False
    assert metric_info("lpips_vgg").higher_is_better is False and "vgg" in metric_info("lpips_vgg").display
    assert metric_info("clip_t").higher_is_better is True
    assert metric_info("clip_edited").higher_is_better is True
    assert metric_info("something_new").higher_is_better is None


# How every score was read before scorers described themselves (the report's own table then), with
# breakdown's display scale: metric_info must give the same for each score a scorer writes.
READ_BEFORE = {
    "clip_t": ("CLIP-T", True, "more editable", 1.0),
    "clip_whole": ("CLIP whole", True, "more editable", 1.0),
    "clip_edited": ("CLIP edited", True, "more editable", 1.0),
    "lpips": ("LPIPS", False, "more faithful", 1e3),
    "lpips_vgg": ("LPIPS (vgg)", False, "more faithful", 1e3),
    "ns_lpips": ("NS-LPIPS", False, "more faithful", 1.0),
    "psnr": ("PSNR", True, "more faithful", 1.0),
    "ssim": ("SSIM", True, "more faithful", 1e2),
    "structure_distance": ("Structure distance", False, "more faithful", 1e3),
    "aesthetic": ("Aesthetic score", True, "more aesthetic", 1.0),
    "sfid": ("SFID", False, "more realistic", 1.0),
    "csfid": ("CSFID", False, "more realistic and on-class", 1.0),
    "fid": ("FID", False, "more realistic", 1.0),
    "kid": ("KID", False, "more realistic", 1.0),
    "kid_std": ("KID (std)", False, "more realistic", 1.0),
    "accuracy": ("Accuracy (DeiT)", True, "more on-target", 1.0),
    "unedited": ("Unedited (DeiT)", False, "more edited", 1.0),
    "gt_psnr": ("PSNR to ground truth", True, "closer to the target", 1.0),
    "gt_lpips": ("LPIPS to ground truth", False, "closer to the target", 1.0),
    "outside_psnr": ("PSNR outside the mask", True, "more faithful", 1.0),
    "attr_acc": ("Attribute accuracy", True, "more on-target", 1.0),
    "psnr_unedited": ("PSNR (unedited)", True, "more faithful", 1.0),
    "lpips_unedited": ("LPIPS (unedited)", False, "more faithful", 1e3),
    "mse_unedited": ("MSE (unedited)", False, "more faithful", 1e4),
    "ssim_unedited": ("SSIM (unedited)", True, "more faithful", 1e2),
    "something_new": ("something_new", None, "", 1.0),
}


@pytest.mark.parametrize("name", list(READ_BEFORE))
def test_metric_info_comes_from_the_scorers_unchanged(name):
    assert metric_info(name) == MetricInfo(*READ_BEFORE[name])


# CIs of the bootstrap this one replaced (numpy: chunked index draws, np.quantile), same inputs and rng.
PINNED_CI = {
    "gamma200": (1.6061003912666627, 1.9589717320457158),
    "normal30000": (-0.007166323620023084, 0.011745542217322031),
}


def test_bootstrap_with_scipy_equals_the_replaced_one():
    # scipy.stats.bootstrap draws the same indices from the same generator (batches of _MAX_DRAWS / k
    # resamples, as the old chunks: 666 of 30,000 values here); only the quantile's last bit differs.
    gamma = np.random.default_rng(7).gamma(2.0, size=200)
    low, high = bootstrap_mean_ci(gamma, n_boot=1000, ci=0.95, rng=np.random.default_rng([0, 1]))
    assert (low, high) == pytest.approx(PINNED_CI["gamma200"], rel=1e-14, abs=0)
    normal = np.random.default_rng(8).normal(size=30000)
    low, high = bootstrap_mean_ci(normal, n_boot=1000, ci=0.9, rng=np.random.default_rng(5))
    assert (low, high) == pytest.approx(PINNED_CI["normal30000"], rel=1e-14, abs=0)


def test_bootstrap_of_one_or_no_value():
    assert bootstrap_mean_ci(np.array([0.25])) == (0.25, 0.25)
    assert all(np.isnan(bootstrap_mean_ci(np.array([]))))
