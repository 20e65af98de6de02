"""Trade-off plot and image grid, drawn from a synthetic run (no model)."""

from __future__ import annotations

import os

import matplotlib
import pytest
from PIL import Image

from editsweep.reports.aggregate import aggregate
from editsweep.reports.plots import axis_label, image_grid, tradeoff_figure, tradeoff_plot


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


def _clumped_summary(run_factory, row_maker, far_copy: bool):
    """Three methods within 0.002 of each other on both axes, their CIs 0.03 wide (so that their
    labels pile up), and optionally `copy` far below."""
    rows = []
    for m, method in enumerate(("a", "b", "c")):
        for guidance in (3.0, 7.5):
            for sample in range(4):
                scores = {
                    "clip_t": 0.85 + 0.0002 * m + 0.0002 * guidance + 0.01 * sample,
                    "lpips": 0.03 + 0.0002 * m + 0.0001 * guidance + 0.01 * sample,
                    "psnr": 25.0 + m + 0.1 * sample,
                }
                rows.append(row_maker(method, guidance, sample, 0, scores))
    if far_copy:
        for sample in range(4):
            rows.append(row_maker("copy", 0.0, sample, 0, {"clip_t": 0.6 + 0.01 * sample, "lpips": 0.0, "psnr": 25.0}))
    return aggregate(run_factory(rows, images=False).read_results())


def test_tradeoff_figure_colours_a_curve_alike_in_every_panel(run_factory, row_maker):
    summary = _clumped_summary(run_factory, row_maker, far_copy=True)
    fig = tradeoff_figure(summary, [("lpips", "clip_t"), ("psnr", "clip_t")])
    colours = [{c.get_label(): c.lines[0].get_color() for c in ax.containers} for ax in fig.axes]
    assert colours[0] == colours[1] and len(set(colours[0].values())) == 4, colours


def test_tradeoff_figure_zooms_past_a_far_point_and_marks_it(run_factory, row_maker):
    ax = tradeoff_figure(_clumped_summary(run_factory, row_maker, far_copy=True), [("lpips", "clip_t")]).axes[0]
    low, high = ax.get_ylim()
    assert 0.7 < low < 0.865 and high > 0.868, (low, high)  # the three methods (means 0.866-0.868) in view, copy not
    marks = [t.get_text() for t in ax.texts if "off scale" in t.get_text()]
    assert marks == ["copy default (off scale): LPIPS 0, CLIP-T 0.615"], marks
    ax = tradeoff_figure(_clumped_summary(run_factory, row_maker, far_copy=False), [("lpips", "clip_t")]).axes[0]
    assert not [t for t in ax.texts if "off scale" in t.get_text()]


def test_tradeoff_figure_moves_clumped_labels_apart(run_factory, row_maker):
    fig = tradeoff_figure(_clumped_summary(run_factory, row_maker, far_copy=True), [("lpips", "clip_t")])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts if "off scale" not in t.get_text()]
    assert len(boxes) == 6
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not overlaps, overlaps


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
