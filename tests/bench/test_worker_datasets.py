"""Issue 10 item 11: the worker keeps one dataset per instance (name + params), not per name."""

import numpy as np
from PIL import Image

from editsweep.bench.plan import plan
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore
from editsweep.bench.worker import SweepWorker
from editsweep.datasets.images import fit_square
from editsweep.datasets.synthetic import SyntheticDataset


def test_two_instances_of_one_dataset_each_load_their_own_samples(tmp_path):
    spec = load_spec(
        {
            "name": "instances",
            "datasets": [{"name": "synthetic", "params": {"n": 2, "seed": 0}}, {"name": "synthetic", "params": {"n": 2, "seed": 7}}],
            "methods": [{"name": "copy"}],
            "metrics": {"psnr": {}},
        }
    )
    worker = SweepWorker(spec, str(tmp_path), "run-test")
    tasks, units = plan(spec)
    assert len(tasks) == 4
    store = RunStore(str(tmp_path))
    for unit in units:
        store.write_rows(worker.process(unit).rows)
    rows = store.read_results()
    assert len(rows) == 4 and (rows["status"] == "ok").all()
    assert set(rows["dataset_params"]) == {'{"n":2,"seed":0,"size":64}', '{"n":2,"seed":7,"size":64}'}
    for _, row in rows.iterrows():
        seed = 7 if '"seed":7' in row["dataset_params"] else 0
        expected = fit_square(SyntheticDataset({"n": 2, "seed": seed}).load(row["sample_id"]).image, 64)
        stored = Image.open(tmp_path / row["image_path"])
        assert np.abs(np.asarray(stored, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1, row["dataset_params"]
