"""Markdown leaderboard: formatting of mean ± half-CI, sorting, warnings, notes on non-finite scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from editsweep.bench.metrics import SCORERS
from editsweep.bench.spec import import_plugins, plugin_module_name
from editsweep.bench.store import SCHEMA
from editsweep.reports.aggregate import aggregate
from editsweep.reports.breakdown import display_scale
from editsweep.reports.leaderboard import format_ci, leaderboard_markdown
from editsweep.reports.plots import axis_label

TOY_METRIC = Path(__file__).parent / "plugins" / "toy_metric.py"


@pytest.fixture(scope="module")
def summary(rows_factory) -> pd.DataFrame:
    return aggregate(pd.DataFrame(rows_factory()).reindex(columns=SCHEMA.names))


def _table_rows(markdown: str) -> list[list[str]]:
    """Cells of every data row of the markdown tables (header and separator rows left out)."""
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row] for row in rows if row[0].strip() not in {"method", "---"}]


@pytest.mark.parametrize(
    ("mean", "low", "high", "text"),
    [
        (0.2734, 0.2611, 0.2857, "0.273 ± 0.012"),
        (21.04, 19.54, 22.54, "21.0 ± 1.5"),
        (123.4, 100.0, 146.8, "123 ± 23"),
        (0.5, 0.5, 0.5, "0.5 ± 0"),
        (float("nan"), float("nan"), float("nan"), "–"),
    ],
)
def test_format_ci(mean, low, high, text):
    assert format_ci(mean, low, high) == text


def test_one_row_per_point_sorted_best_first(summary):
    markdown = leaderboard_markdown(summary, ["clip_t", "lpips"], sort_by="clip_t")
    rows = _table_rows(markdown)
    assert len(rows) == len(summary) == 6
    clip = [float(r[3].strip("*").split(" ± ")[0]) for r in rows]
    assert clip == sorted(clip, reverse=True)
    by_lpips = _table_rows(leaderboard_markdown(summary, ["lpips"], sort_by="lpips"))
    lpips = [float(r[3].strip("*").split(" ± ")[0]) for r in by_lpips]
    assert lpips == sorted(lpips)  # lower is better: ascending
    assert rows[0][3].startswith("**")  # the best CLIP-T is bold
    assert "CLIP-T ↑ (sorted)" in markdown and "LPIPS ↓" in markdown


def test_random_weights_warning_heads_the_page(summary):
    warned = leaderboard_markdown(summary, ["clip_t"])
    assert "random weights" in "\n".join(warned.splitlines()[:4])
    assert "random weights" not in leaderboard_markdown(summary.assign(random_weights=False), ["clip_t"])


def test_toy_weights_note_heads_the_page(summary):
    toy = summary.assign(random_weights=False, weights="backbone=toy:0123456789ab;clip_t=toy:clip")
    page = "\n".join(leaderboard_markdown(toy, ["clip_t"]).splitlines()[:4])
    assert "Toy weights" in page and "random weights" not in page
    assert "Toy weights" not in leaderboard_markdown(summary.assign(random_weights=False), ["clip_t"])


def test_errors_and_non_finite_counts_are_shown(summary):
    point = summary.index[summary["label"].eq("guidance=3")][0]
    noisy = summary.copy()
    noisy.loc[point, ["psnr_n", "psnr_n_inf"]] = [6, 2]
    markdown = leaderboard_markdown(noisy, ["psnr"], sort_by=None)
    assert "(n=6; 2 inf left out)" in markdown
    assert "nti / guidance=12: 1 failed tasks (8 ok); most common: `RuntimeError: out of memory`" in markdown


def test_pipes_in_labels_are_escaped(summary):
    markdown = leaderboard_markdown(summary.assign(label="a|b"), ["clip_t"])
    assert "a\\|b" in markdown


def test_unknown_metric_is_an_error(summary):
    with pytest.raises(ValueError, match="aesthetic"):
        leaderboard_markdown(summary, ["aesthetic"])


def test_a_metric_added_in_one_file_gets_its_arrow_best_and_scale(row_maker, monkeypatch):
    monkeypatch.setattr(SCORERS, "_classes", dict(SCORERS._classes))  # registered for this test only
    monkeypatch.delitem(sys.modules, plugin_module_name(TOY_METRIC), raising=False)
    (plugin,) = import_plugins([str(TOY_METRIC)])
    scorer = SCORERS["toy_change"](None, torch.device("cpu"))
    images = torch.zeros(2, 3, 8, 8)
    changes = scorer.score(images + torch.tensor([0.1, 0.3]).view(2, 1, 1, 1), images, []).scores["toy_change"]
    rows = [
        row_maker(method, 7.5, i, 0, {"clip_t": 0.3, "toy_change": float(change) + 0.01 * i})
        for method, change in zip(("gentle", "harsh"), changes, strict=True)
        for i in range(4)
    ]
    summary = aggregate(pd.DataFrame(rows).reindex(columns=SCHEMA.names))
    markdown = leaderboard_markdown(summary, ["toy_change"], sort_by="toy_change")
    assert "Toy change ↓ (sorted)" in markdown
    rows = _table_rows(markdown)
    assert [r[0] for r in rows] == ["gentle", "harsh"] and rows[0][3].startswith("**")  # lower is better
    assert axis_label("toy_change") == "Toy change (lower = more faithful)"
    assert display_scale("toy_change") == 100 and plugin.ToyChangeScorer is SCORERS["toy_change"]
