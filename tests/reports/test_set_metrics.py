"""The report's set-level step: SFID/CSFID against FlexIT's formula per point, reference stats files, extractor checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from editsweep.bench.cli import main
from editsweep.bench.metrics.inception import InceptionScorer
from editsweep.datasets.images import load_rgb
from editsweep.reports.aggregate import aggregate, summary_metrics
from editsweep.reports.leaderboard import leaderboard_markdown
from editsweep.reports.reference_stats import ReferenceStats, ReferenceStatsError
from editsweep.reports.report import build_report
from editsweep.reports.set_level import SET_METRICS, SetMetric, register_set_metric
from editsweep.reports.set_metrics import add_set_metrics, merge_into_summary, point_set_metrics

EXTRACTOR = "random-cnn64:seed0:crop256"
WNIDS = ["n01440764", "n01443537", "n01484850"]


def make_stats(rng: np.random.Generator, d: int = 16, extractor: str = EXTRACTOR) -> ReferenceStats:
    sample = rng.normal(size=(50, d))
    return ReferenceStats(
        extractor=extractor,
        wnids=WNIDS,
        class_means=rng.normal(size=(3, d)),
        class_counts=np.array([10, 10, 10]),
        mean=sample.mean(0),
        cov=np.cov(sample, rowvar=False),
        count=50,
        sample_features=sample,
    )


def feature_rows(row_maker, rng, d: int = 16, extractor: str = EXTRACTOR) -> list[dict]:
    """Two methods x 2 guidances x 7 samples; sample i aims at class i % 3 (unequal class counts)."""
    rows = []
    for method in ("ddim", "nti"):
        for guidance in (3.0, 7.5):
            for sample in range(7):
                rows.append(
                    row_maker(
                        method,
                        guidance,
                        sample,
                        0,
                        {"lpips": 0.1 * guidance},
                        features={"inception": rng.normal(size=d).astype(np.float32)},
                        labels={"target_wnid": WNIDS[sample % 3], "target_id": str(sample % 3)},
                        weights=f"backbone=tiny:random;inception={extractor}",
                    )
                )
    return rows


def flexit_scores(preds: torch.Tensor, target_ids: torch.Tensor, stats: ReferenceStats) -> tuple[float, float]:
    """SFID and CSFID the way FlexIT's eval.py computes them (torch, classes keyed by id)."""
    dataset_m = torch.from_numpy(stats.mean)
    classwise = {i: {"mean": torch.from_numpy(stats.class_means[i])} for i in range(len(stats.wnids))}
    set_target_ids = set(target_ids.tolist())
    id2mean = {i: preds[target_ids == i].mean(0) for i in set_target_ids}
    dists = [(id2mean[i] - classwise[i]["mean"]).pow(2).sum() for i in set_target_ids]
    return (preds.mean(0) - dataset_m).pow(2).sum().item(), torch.stack(dists).mean().item()


def test_sfid_and_csfid_equal_flexits_formula(row_maker, run_factory):
    rng = np.random.default_rng(3)
    stats = make_stats(rng)
    results = run_factory(feature_rows(row_maker, rng), images=False).read_results()
    points = point_set_metrics(results, {"toy": stats})
    assert len(points) == 4 and (points["n_features"] == 7).all()
    for _, point in points.iterrows():
        mine = results[(results["method"] == point["method"]) & (results["edit_params"] == point["edit_params"])]
        preds = torch.tensor(np.stack(mine["features"].map(lambda f: f["inception"]).tolist()), dtype=torch.float64)
        target_ids = torch.tensor([int(lab["target_id"]) for lab in mine["labels"]])
        expected_sfid, expected_csfid = flexit_scores(preds, target_ids, stats)
        assert point["sfid"] == pytest.approx(expected_sfid, rel=1e-9)
        assert point["csfid"] == pytest.approx(expected_csfid, rel=1e-9)
        # ... and the formula written out directly in numpy (METRICS.md): means only, classes equally.
        feats, ids = preds.numpy(), target_ids.numpy()
        assert point["sfid"] == pytest.approx(((feats.mean(0) - stats.mean) ** 2).sum(), rel=1e-9)
        per_class = [((feats[ids == c].mean(0) - stats.class_means[c]) ** 2).sum() for c in np.unique(ids)]
        assert point["csfid"] == pytest.approx(np.mean(per_class), rel=1e-9)
        # CSFID weights classes equally: it is not the image-weighted mean of per-image distances.
        assert point["csfid"] != pytest.approx(point["sfid"], rel=1e-3)


def test_reference_stats_command_round_trips(imagenet_layout, tmp_path, capsys):
    out = tmp_path / "stats.npz"
    args = ["reference-stats", str(imagenet_layout["train"]), "--out", str(out), "--weights", "random"]
    assert main([*args, "--batch-size", "2", "--device", "cpu"]) == 0
    assert "9 images in 3 classes" in capsys.readouterr().out
    stats = ReferenceStats.load(out)
    assert stats.extractor == EXTRACTOR and stats.wnids == sorted(imagenet_layout["target_wnids"])
    assert stats.class_counts.tolist() == [3, 3, 3] and stats.sample_features.shape == (9, 64)
    # The same features as scoring each image alone (resize + crop, then the extractor).
    scorer = InceptionScorer({"weights": "random"}, torch.device("cpu"))
    per_class = []
    for wnid in stats.wnids:
        files = sorted((imagenet_layout["train"] / wnid).iterdir())
        tensors = [torch.from_numpy(np.asarray(load_rgb(f)) / 255.0).permute(2, 0, 1)[None].float() for f in files]
        per_class.append(torch.cat([scorer.features(t) for t in tensors]).double().numpy())
    everything = np.concatenate(per_class)
    np.testing.assert_allclose(stats.class_means, [f.mean(0) for f in per_class], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.cov, np.cov(everything, rowvar=False), rtol=1e-4, atol=1e-7)


def test_reference_stats_errors_name_the_problem(tmp_path, capsys):
    assert (
        main(["reference-stats", str(tmp_path / "none"), "--out", str(tmp_path / "s.npz"), "--weights", "random"]) == 2
    )
    assert "none does not exist" in capsys.readouterr().err
    with pytest.raises(ReferenceStatsError, match="editsweep reference-stats"):
        ReferenceStats.load(tmp_path / "missing.npz")
    with pytest.raises(ReferenceStatsError, match="no class n09999999"):
        make_stats(np.random.default_rng(0)).class_mean("n09999999")


def test_the_report_refuses_stats_from_another_extractor(row_maker, run_factory, tmp_path):
    rng = np.random.default_rng(5)
    store = run_factory(feature_rows(row_maker, rng, extractor="fid-inception-v3:sha256-0123456789abcdef:crop256"))
    stats_file = make_stats(rng).save(tmp_path / "stats.npz")
    with pytest.raises(ReferenceStatsError, match="computed with extractor 'random-cnn64:seed0:crop256'"):
        build_report(store.root, f"sqlite:///{tmp_path / 'mlflow.db'}", reference_stats=str(stats_file))


def test_without_reference_stats_the_set_metrics_are_a_note(row_maker, run_factory, tmp_path):
    store = run_factory(feature_rows(row_maker, np.random.default_rng(6)), images=False)
    results = store.read_results()
    summary = aggregate(results)
    same, figures, notes = add_set_metrics(summary, results, {"datasets": [{"name": "toy"}]}, tmp_path, None)
    assert same is summary and figures == [] and "no reference stats" in notes[0]


def test_a_registered_set_metric_reaches_the_summary_and_the_leaderboard(row_maker, run_factory, monkeypatch):
    monkeypatch.setattr(SET_METRICS, "_classes", dict(SET_METRICS._classes))  # registered for this test only

    @register_set_metric
    class FeatureSpread(SetMetric):
        """Mean per-dimension standard deviation of the features (higher: more diverse)."""

        name = "spread"
        display = "Feature spread"
        higher_is_better = True
        meaning = "more diverse"
        extras = ("spread_images",)

        def reset(self) -> None:
            self.parts: list[np.ndarray] = []

        def update(self, features: np.ndarray, targets: Sequence[str] | None = None) -> None:
            self.parts.append(np.asarray(features))

        def compute(self) -> dict[str, float]:
            features = np.concatenate(self.parts)
            return {"spread": float(features.std(0).mean()), "spread_images": float(len(features))}

    rng = np.random.default_rng(7)
    results = run_factory(feature_rows(row_maker, rng), images=False).read_results()
    points = point_set_metrics(results, {"toy": make_stats(rng)})
    assert list(points.columns[-8:]) == ["sfid", "csfid", "fid", "kid", "spread", "kid_std", "spread_images", "n_features"]
    summary = merge_into_summary(aggregate(results), points)
    assert summary_metrics(summary)[-5:] == ["sfid", "csfid", "fid", "kid", "spread"]
    assert (summary["spread_images"] == 7).all() and summary["spread_mean"].notna().all()
    markdown = leaderboard_markdown(summary, ["spread", "csfid"], sort_by="spread")
    assert "Feature spread ↑ (sorted)" in markdown and "CSFID ↓" in markdown
