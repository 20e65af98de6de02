"""The static site in a real headless Chromium (issue 14, item 4): sort, filter, gallery, charts.

The site is opened from `file://` URLs with every network request refused, so a page that needed
a CDN or a server would fail here. Chromium is Debian's (`.ci/run` installs the `chromium`
package), driven by Playwright; Playwright's own browser download is not used. A screenshot of
each page is written to the test's tmp folder and, when EDITSWEEP_SITE_SCREENSHOTS names a
folder, there too, for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from editsweep.reports.aggregate import aggregate
from editsweep.reports.matched import MatchedOptions, matched_comparison
from editsweep.reports.site import SiteRun, write_site

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (uv sync installs it)")

CHROMIUM = next(
    (p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium found: apt-get install chromium (.ci/run does), or set CHROMIUM=/path"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(labelled_run_factory, tmp_path_factory) -> Path:
    """A site of one labelled run (no MLflow: the site itself is what is tested here)."""
    store = labelled_run_factory()
    results = store.read_results()
    summary = aggregate(results, n_boot=100)
    matched = matched_comparison(results, summary, MatchedOptions(n_boot=100))
    run = SiteRun("toy-run", store, results, summary, spec={"name": "toy-run"}, matched=matched)
    return write_site([run], tmp_path_factory.mktemp("site"), n_boot=50).parent


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    """A page whose requests other than file:// are refused and recorded, and whose JS errors are kept."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.blocked, page.errors = [], []
    page.on("pageerror", lambda err: page.errors.append(str(err)))

    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            page.blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    yield page
    assert page.errors == [], f"JavaScript errors: {page.errors}"
    assert page.blocked == [], f"the site asked the network for {page.blocked}"
    context.close()


def _screenshot(page, name: str, tmp_path: Path) -> None:
    """Write a full-page screenshot to tmp_path and to $EDITSWEEP_SITE_SCREENSHOTS when set."""
    folders = [
        tmp_path,
        *([Path(os.environ["EDITSWEEP_SITE_SCREENSHOTS"])] if os.environ.get("EDITSWEEP_SITE_SCREENSHOTS") else []),
    ]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        assert (folder / f"{name}.png").stat().st_size > 10_000


def _visible_column(page, table: str, col: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr:not([hidden])", f"rows => rows.map(r => r.cells[{col}].getAttribute('data-sort'))"
    )


def _column(page, table: str, header: str) -> int:
    headers = page.eval_on_selector_all(f"#{table} thead th", "hs => hs.map(h => h.textContent)")
    return headers.index(header)


def test_index_sorts_filters_and_draws_the_charts(site, page, tmp_path):
    page.goto((site / "index.html").as_uri())
    page.wait_for_selector("#tradeoff-0-0 .main-svg")  # plotly ran from the site folder
    point = page.locator("#tradeoff-0-0 .scatterlayer .trace:first-child .points path").first
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=4)  # the drag layer is on top
    page.wait_for_selector("#tradeoff-0-0 .hoverlayer .hovertext", timeout=5000)
    hover = page.text_content("#tradeoff-0-0 .hoverlayer")  # what a person sees hovering the point
    assert "ddim" in hover and '"guidance": 3.0' in hover and "CLIP-T" in hover
    assert page.inner_text("#leaderboard-count") == "6 of 18 rows"  # edit type "all" by default

    clip = _column(page, "leaderboard-table", "CLIP-T ↑")
    before = [float(v) for v in _visible_column(page, "leaderboard-table", clip)]
    page.click(f"#leaderboard-table thead th:nth-child({clip + 1})")
    ascending = [float(v) for v in _visible_column(page, "leaderboard-table", clip)]
    assert ascending == sorted(before) and ascending != before
    page.click(f"#leaderboard-table thead th:nth-child({clip + 1})")
    assert [float(v) for v in _visible_column(page, "leaderboard-table", clip)] == sorted(before, reverse=True)
    _screenshot(page, "index", tmp_path)

    page.select_option("#leaderboard-filter-method", "nti")
    page.select_option("#leaderboard-filter-edit-type", "shape")
    method, edit_type = _column(page, "leaderboard-table", "method"), _column(page, "leaderboard-table", "edit type")
    assert set(_visible_column(page, "leaderboard-table", method)) == {"nti"}
    assert set(_visible_column(page, "leaderboard-table", edit_type)) == {"shape"}
    assert page.inner_text("#leaderboard-count") == "3 of 18 rows"
    _screenshot(page, "index-filtered", tmp_path)

    page.select_option("#samples-filter-edit-type", "color")
    assert _visible_column(page, "samples-table", _column(page, "samples-table", "sample")) == ["s0", "s2"]


def test_gallery_page_shows_the_input_edits_and_scores(site, page, tmp_path):
    page.goto((site / "index.html").as_uri())
    page.click("#samples-table a:text-is('s1')")
    page.wait_for_selector("#sample")
    assert "a dog number 1" in page.inner_text("table.facts") and "shape" in page.inner_text("table.facts")
    loaded = page.eval_on_selector_all("figure img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == 7 and all(loaded)  # the input and 2 methods x 3 points, all decoded
    captions = page.eval_on_selector_all("figure.edit figcaption", "cs => cs.map(c => c.textContent)")
    assert "nti guidance=7.5 (seed 0)" in captions
    scores = page.eval_on_selector_all("td.score[data-metric='clip_t']", "cs => cs.map(c => parseFloat(c.textContent))")
    assert len(scores) == 6 and all(0.1 < s < 0.5 for s in scores)
    _screenshot(page, "gallery", tmp_path)
    page.click("nav a:text-is('Leaderboard')")
    page.wait_for_selector("#leaderboard-table")


def test_comparison_page_draws_curves_and_sorts_pairs(site, page, tmp_path):
    page.goto((site / "comparison.html").as_uri())
    page.wait_for_selector("#matched-0 .main-svg")
    col = _column(page, "comparison-table", "level")
    page.click(f"#comparison-table thead th:nth-child({col + 1})")
    page.click(f"#comparison-table thead th:nth-child({col + 1})")
    levels = [float(v) for v in _visible_column(page, "comparison-table", col)]
    assert len(levels) == 3 and levels == sorted(levels, reverse=True)
    _screenshot(page, "comparison", tmp_path)
