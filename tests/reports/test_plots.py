"""Trade-off plot and image grid, drawn from a synthetic run (no model)."""

from __future__ import annotations

import os

import matplotlib
import pytest
from PIL import Image

from editsweep.reports.aggregate import aggregate
from editsweep.reports.plots import axis_label, image_grid, tradeoff_plot


@pytest.fixture(scope="module")
def run(run_factory, rows_factory):
    store = run_factory(rows_factory())
    return store, store.read_results()


def _svg_text(summary, path, **kwargs) -> str:
    """Render as SVG with text kept as text, so that titles and labels can be checked."""
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        tradeoff_plot(summary, path, **kwargs)
    return path.read_text()


def test_tradeoff_plot_labels_axes_with_directions_and_warns_on_random_weights(run, tmp_path):
    summary = aggregate(run[1])
    svg = _svg_text(summary, tmp_path / "t.svg")
    for text in (
        "LPIPS (lower = more faithful)",
        "CLIP-T (higher = more editable)",
        "RANDOM WEIGHTS",
        "Pareto front",
        "ddim / toy",
        "nti / toy",
        "guidance=7.5",
        "95% bootstrap CI",
    ):
        assert text in svg, text
    real = summary.assign(random_weights=False)
    assert "RANDOM WEIGHTS" not in _svg_text(real, tmp_path / "real.svg")
    toy = real.assign(weights="backbone=toy:0123456789ab;clip_t=toy:clip")
    assert "TOY WEIGHTS" in _svg_text(toy, tmp_path / "toy.svg") and "TOY WEIGHTS" not in _svg_text(real, tmp_path / "r.svg")


def test_tradeoff_plot_writes_png(run, tmp_path):
    path = tradeoff_plot(aggregate(run[1]), tmp_path / "t.png", x="psnr", y="clip_t")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400


def test_tradeoff_plot_refuses_a_missing_metric(run, tmp_path):
    with pytest.raises(ValueError, match="aesthetic"):
        tradeoff_plot(aggregate(run[1]), tmp_path / "t.png", x="lpips", y="aesthetic")


def test_axis_label_of_unknown_metric():
    assert axis_label("foo") == "foo (direction unknown)"


def test_image_grid_shape_follows_rows_and_columns(run, tmp_path):
    store, results = run
    with Image.open(image_grid(store, results, tmp_path / "g.png", max_rows=4)) as full:
        full_size = full.size
    with Image.open(image_grid(store, results, tmp_path / "s.png", max_rows=2, max_cols=3)) as small:
        assert small.width < full_size[0] and small.height < full_size[1]


def test_image_grid_shows_inputs_and_survives_a_missing_image(run_factory, rows_factory, tmp_path):
    store = run_factory(rows_factory(n_samples=2, n_seeds=1))
    results = store.read_results()
    os.remove(store.path(results.loc[results["status"] == "ok", "image_path"].iloc[0]))
    without_inputs = Image.open(image_grid(store, results, tmp_path / "plain.png"))
    for sample_id in ("s0", "s1"):
        rel = store.write_input("toy", sample_id, Image.new("RGB", (16, 16), "white"))
        results.loc[results["sample_id"] == sample_id, "input_path"] = rel
    with Image.open(image_grid(store, results, tmp_path / "g.png")) as with_inputs:
        assert with_inputs.width > without_inputs.width  # one more column: the inputs


def test_image_grid_needs_an_ok_row(run, tmp_path):
    store, results = run
    with pytest.raises(ValueError, match="no ok rows"):
        image_grid(store, results[results["status"] == "error"], tmp_path / "g.png")
