"""The seed papers' quickstart-sized specs (`configs/quick/`) run offline on the tiny backbone.

Each spec runs in-process (one `SweepWorker`, rows written as the driver writes them): every planned
task must end as an `ok` row. The full-size specs next to them are checked by
tests/bench/test_spec.py (they validate) and need GPUs and real weights to run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from editsweep.bench.plan import plan
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker

QUICK = sorted((Path(__file__).resolve().parents[2] / "configs" / "quick").glob("*.yaml"))


def test_there_is_a_quick_spec_for_each_seed_paper():
    assert {p.stem for p in QUICK} >= {"imagic", "timestep-injection", "style-diffusion", "layer-diffusion"}


@pytest.mark.slow
@pytest.mark.parametrize("path", QUICK, ids=[p.stem for p in QUICK])
def test_quick_spec_runs_offline(path, tmp_path):
    spec = load_spec(path)
    store = RunStore(str(tmp_path))
    worker = SweepWorker(spec, str(tmp_path), "run-quick")
    tasks, units = plan(spec, set())
    for unit in units:
        store.write_rows(worker.process(unit).rows)
    rows = store.read_results()
    assert len(rows) == len(tasks) > 0
    assert rows["status"].eq("ok").all(), rows["error"].dropna().unique().tolist()
    assert rows["scores"].map(lambda s: "lpips" in s and "clip_t" in s).all()
    assert rows["random_weights"].all()  # and every row says so, with each model's source:
    assert rows["weights"].str.contains(r"backbone=tiny(?:-ip2p|-inpaint|-sd3|-flux|-sdxl|-sdxl-ip2p|-qwen-image)?:random").all()
    if path.stem == "style-diffusion":
        styled = rows[rows["method"] == "style_diffusion"]
        assert styled["weights"].str.contains("image_encoder=tiny:random").all()
    if path.stem == "controlnet":
        assert rows["weights"].str.contains("controlnet=tiny:random").all()
    if path.stem == "clip-editing":
        assert rows["weights"].str.contains("clip=tiny-clip:random").all()
    if path.stem == "t2i-adapter":
        assert rows["weights"].str.contains("adapter=tiny:random").all()
        assert rows["weights"].str.contains("depth=tiny:random").any()
    if path.stem == "cyclenet":
        assert rows["weights"].str.contains("cyclenet=tiny:random").all()
    if path.stem == "blended-diffusion":
        assert rows["weights"].str.contains("guidance_clip=tiny-clip:random").all()


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "qwen-image"])
def test_every_method_declared_for_a_family_runs_in_a_quick_spec_on_it(family):
    """Issue 15's acceptance: each shipped method (not the test plugins other tests register) declaring
    a backbone family is in a quick spec on a tiny preset of that family (precomputed and text2live use
    no diffusion model: their own tests cover them on every family)."""
    from editsweep.diffusion.backbone import family_of
    from editsweep.methods.base import METHODS

    shipped = {name for name, cls in METHODS.items() if cls.__module__.startswith("editsweep.methods.")}
    declared = {name for name in shipped if family in METHODS[name].families} - {"precomputed", "text2live"}
    quick = set()
    for path in QUICK:
        spec = load_spec(path)
        if any(family_of(b.name) == family for b in spec.backbones):
            quick |= {m.name for m in spec.methods}
    assert declared and declared <= quick, sorted(declared - quick)
