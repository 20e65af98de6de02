"""A method meets a backbone of a family it does not support: refused at validation when the family
is known by name, else its tasks (only those) fail when the worker has loaded the backbone."""

from __future__ import annotations

import json

import pytest

from editsweep.bench.plan import plan
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker
from editsweep.diffusion.backbone import load_backbone


@pytest.fixture
def flux_in_the_hub_cache(monkeypatch, tmp_path):
    """The tiny FLUX pipeline saved in an offline Hub cache under an id no table knows."""
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--someone--my-flux"
    load_backbone("tiny-flux").pipe.save_pretrained(repo / "snapshots" / commit, safe_serialization=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return "someone/my-flux"


def test_unknown_family_fails_only_the_refusing_methods_tasks_at_load(flux_in_the_hub_cache, tmp_path):
    spec = load_spec(
        {
            "name": "fam",
            "backbone": {"name": flux_in_the_hub_cache},
            "datasets": [{"name": "synthetic", "params": {"n": 1, "size": 64}}],
            "methods": [
                {"name": "sdedit", "edit": {"steps": 2}},
                {"name": "flowedit", "edit": {"steps": 2}},
                {"name": "invert_edit", "invert": {"inversion": ["ddim", "flow"], "steps": 2}, "edit": {"editor": "plain"}},
            ],
            "metrics": {},
        }
    )
    store = RunStore(str(tmp_path / "run"))
    worker = SweepWorker(spec, str(tmp_path / "run"), "run-fam")
    assert worker.backbone.family == "flux" and not worker.backbone.random_weights
    _, units = plan(spec, set())
    for unit in units:
        store.write_rows(worker.process(unit).rows)
    results = store.read_results()
    pairs = results[results["method"] == "invert_edit"]
    pairs = pairs.set_index(pairs["invert_params"].map(lambda p: json.loads(p)["inversion"]))
    rows = results[results["method"] != "invert_edit"].set_index("method")
    assert rows.loc["flowedit", "status"] == "ok"
    assert rows.loc["sdedit", "status"] == "error"
    assert "sdedit runs on backbone families sd, sdxl, not 'flux'" in rows.loc["sdedit", "error"]
    # an inversion x editor pair: only the pair whose inversion is of another family fails
    assert pairs.loc["flow", "status"] == "ok"
    assert pairs.loc["ddim", "status"] == "error"
    assert "inversion 'ddim' runs on backbone families sd, sdxl, not 'flux'" in pairs.loc["ddim", "error"]
