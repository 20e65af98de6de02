"""The static site's files, without a browser: links, data, pages, the report and the CLI writing it."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from editsweep.bench.cli import main
from editsweep.reports.aggregate import aggregate
from editsweep.reports.report import build_report
from editsweep.reports.site import SiteError, SiteRun, unique_run_names, write_site
from editsweep.reports.tracking import MlflowClient, mlflow_run_url


class _Links(HTMLParser):
    """Every href and src of a page, and the text of its <script> tags that have a src."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("href", "src"):
            if values.get(name):
                self.links.append(values[name])
        if tag == "script" and values.get("src"):
            self.scripts.append(values["src"])


def _links(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def reported(labelled_run_factory, mlflow_db_template, tmp_path_factory):
    """A labelled run reported with the site (default) into a tracking DB of its own."""
    store = labelled_run_factory()
    db = tmp_path_factory.mktemp("site-tracking") / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    return store, build_report(store.root, tracking_uri=f"sqlite:///{db}", experiment="site")


def test_every_link_is_relative_and_exists(reported):
    _, result = reported
    site = result.site_index.parent
    pages = sorted(site.rglob("*.html"))
    assert {p.name for p in pages} >= {"index.html", "comparison.html"}
    assert len(list((site / "samples").glob("*.html"))) == 4  # s0..s3; s4 has only an error row
    for page in pages:
        parsed = _links(page)
        assert parsed.scripts, f"{page} loads no script"
        for link in parsed.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc and not link.startswith("/"), f"{page}: {link} is not relative"
            if parts.path:
                assert (page.parent / parts.path).resolve().is_file(), f"{page}: {link} does not exist"
    assert (site / "plotly.min.js").stat().st_size > 1_000_000  # the whole library, no CDN


def test_leaderboard_data_matches_the_summary(reported):
    _, result = reported
    site = result.site_index.parent
    board = pd.DataFrame(json.loads((site / "data" / "leaderboard.json").read_text()))
    summary = pd.read_csv(result.summary_csv)
    overall = board[board["edit_type"] == "all"].reset_index(drop=True)
    assert len(overall) == len(summary) == 6
    for metric in ("clip_t", "lpips", "psnr"):
        np.testing.assert_allclose(overall[f"{metric}_mean"], summary[f"{metric}_mean"])
    assert sorted(board["edit_type"].unique()) == ["all", "color", "shape"]
    color = board[(board["edit_type"] == "color") & (board["method"] == "ddim") & (board["label"] == "guidance=3")]
    results = reported[0].read_results()
    chosen = results[
        results["method"].eq("ddim")
        & results["sample_id"].isin(["s0", "s2"])
        & results["edit_params"].str.contains('"guidance": 3.0')
    ]
    assert color["n"].item() == len(chosen) == 4
    assert color["clip_t_mean"].item() == pytest.approx(np.mean([s["clip_t"] for s in chosen["scores"]]))
    index = (site / "index.html").read_text()
    best = overall["clip_t_mean"].max()
    assert f'<td class="best" data-sort="{float(best)!r}">' in index  # the cell's sort key is the mean itself


def test_pages_show_warnings_gallery_scores_and_provenance(reported):
    store, result = reported
    site = result.site_index.parent
    index = (site / "index.html").read_text()
    assert "RANDOM weights" in index and 'id="tradeoff-0-0"' in index and "Pareto front" in index
    assert "backbone=tiny:random" in index and "run-1" in index and 'class="mlflow"' not in index
    assert 'id="leaderboard-filter-edit-type"' in index and 'id="matched-values"' in index
    sample = next(p for p in (site / "samples").glob("*.html") if "s1" in p.name).read_text()
    assert "a dog number 1" in sample and "shape" in sample and sample.count('<figure class="edit"') == 6
    assert 'alt="input"' in sample and sample.count('data-metric="clip_t"') == 6
    comparison = (site / "comparison.html").read_text()
    assert 'id="comparison-table"' in comparison and "Holm p" in comparison
    matched = json.loads((site / "data" / "matched.json").read_text())
    assert {r["curve"] for r in matched["values"]} == {"ddim", "nti"}


def test_the_site_is_logged_to_the_mlflow_run(reported):
    _, result = reported
    client = MlflowClient(tracking_uri=result.tracking_uri)
    logged = {a.path for a in client.list_artifacts(result.mlflow_run_id, "report/site")}
    assert {"report/site/index.html", "report/site/comparison.html", "report/site/samples"} <= logged


def test_site_across_runs_via_the_cli(
    labelled_run_factory, run_factory, rows_factory, mlflow_db_template, tmp_path, capsys
):
    first, second = labelled_run_factory(), run_factory(rows_factory(n_samples=2, n_seeds=1))
    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    site = tmp_path / "board"
    assert main(["report", first.root, second.root, "--site", str(site), "--tracking-uri", uri]) == 0
    assert f"site across 2 runs: {site / 'index.html'}" in capsys.readouterr().out
    board = pd.DataFrame(json.loads((site / "data" / "leaderboard.json").read_text()))
    names = [Path(first.root).name, Path(second.root).name]
    assert board.groupby("run").size().to_dict() == {names[0]: 18, names[1]: 6}
    index = (site / "index.html").read_text()
    assert 'id="leaderboard-filter-run"' in index
    assert len(list((site / "samples").glob("*.html"))) == 4 + 2
    assert (Path(first.root) / "report" / "site" / "index.html").is_file()  # each run's own site too


def test_cli_rejects_a_site_across_runs_without_a_folder(tmp_path):
    with pytest.raises(SystemExit, match="give --site DIR"):
        main(["report", str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="contradict"):
        main(["report", str(tmp_path / "a"), "--site", str(tmp_path / "s"), "--no-site"])


def test_write_site_errors_and_mlflow_link(labelled_run_factory, tmp_path):
    with pytest.raises(SiteError, match="no runs"):
        write_site([], tmp_path)
    store = labelled_run_factory()
    results = store.read_results()
    run = SiteRun("r", store, results, aggregate(results, n_boot=50), mlflow_url="http://mlflow.example:5000/#/runs/x")
    with pytest.raises(SiteError, match="repeat"):
        write_site([run, run], tmp_path)
    write_site([run], tmp_path / "site")
    index = write_site([run], tmp_path / "site", max_samples=1, points_per_method=2).read_text()
    assert 'class="mlflow" href="http://mlflow.example:5000/#/runs/x"' in index
    pages = list((tmp_path / "site" / "samples").glob("*.html"))
    assert len(pages) == 1  # the earlier site's other sample pages are gone
    sample = pages[0].read_text()
    assert sample.count('<figure class="edit"') == 4  # two points per method
    assert unique_run_names(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]


def test_mlflow_run_url(monkeypatch):
    assert mlflow_run_url("sqlite:////tmp/mlflow.db", "abc") is None

    class Client:
        def __init__(self, tracking_uri: str) -> None:
            self.uri = tracking_uri

        def get_run(self, run_id: str):
            return type("Run", (), {"info": type("Info", (), {"experiment_id": "7"})})()

    monkeypatch.setattr("editsweep.reports.tracking.MlflowClient", Client)
    assert mlflow_run_url("http://host:5000/", "abc") == "http://host:5000/#/experiments/7/runs/abc"
