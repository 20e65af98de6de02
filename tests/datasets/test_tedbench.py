"""TEdBench: the 100 pairs of the shared copy, the verified download (from file:// URLs), and its errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from editsweep.datasets import get_dataset_class
from editsweep.datasets.base import DatasetError
from editsweep.datasets.tedbench import SHA256, TEdBench, cache_dir, download

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "tedbench"
SMALL_IMAGE = "couple_beach.jpeg"  # 16 kB, for hand-made roots


@pytest.fixture(scope="module")
def shared() -> Path:
    if not (SHARED / "input_list.json").is_file():
        pytest.skip(f"the shared TEdBench copy is not at {SHARED}")
    return SHARED


@pytest.fixture(scope="module")
def full(shared) -> TEdBench:
    return TEdBench({"root": str(shared)})


def _make_root(tmp_path: Path, pairs: list[tuple[str, str]], files: dict[str, bytes]) -> Path:
    (tmp_path / "originals").mkdir(parents=True)
    (tmp_path / "input_list.json").write_text(json.dumps([{"img_name": n, "target_text": t} for n, t in pairs]))
    for name, data in files.items():
        (tmp_path / "originals" / name).write_bytes(data)
    return tmp_path


def test_reads_all_100_pairs_as_rgb(full, shared):
    assert get_dataset_class("tedbench") is TEdBench
    published = json.loads((shared / "input_list.json").read_text())
    ids = full.sample_ids()
    assert len(ids) == 100 == len(set(ids))
    assert ids[0] == f"000-{published[0]['img_name']}"
    samples = [full.load(i) for i in ids]
    assert all(s.image.mode == "RGB" for s in samples)
    loaded = [(s.meta["img_name"], s.target_prompt) for s in samples]
    assert loaded == [(p["img_name"], p["target_text"]) for p in published]
    assert all(s.source_prompt is None for s in samples)
    names = {s.meta["img_name"] for s in samples}
    assert len(names) == 40
    assert {"bird.png", "bird.jpeg"} <= names


def test_bird_png_is_jpeg_data_and_loads_like_bird_jpeg(full):
    by_name = {full.load(i).meta["img_name"]: i for i in full.sample_ids()}
    png, jpeg = full.load(by_name["bird.png"]), full.load(by_name["bird.jpeg"])
    assert png.image.tobytes() == jpeg.image.tobytes()
    assert png.target_prompt != jpeg.target_prompt


def test_limit_and_unknown_id(shared):
    dataset = TEdBench({"root": str(shared), "limit": 5})
    assert len(dataset.sample_ids()) == 5
    with pytest.raises(DatasetError, match="unknown tedbench sample id"):
        dataset.load("099-zebra.jpeg")


def test_source_prompts_file(shared, tmp_path):
    prompts = tmp_path / "sources.json"
    prompts.write_text(json.dumps({"dog2_standing.png": "A photo of a standing dog."}))
    dataset = TEdBench({"root": str(shared), "source_prompts": str(prompts)})
    first, *_ = dataset.sample_ids()
    assert dataset.load(first).source_prompt == "A photo of a standing dog."
    other = next(i for i in dataset.sample_ids() if not i.endswith("dog2_standing.png"))
    with pytest.raises(DatasetError, match="no entry for"):
        dataset.load(other)


@pytest.mark.parametrize("params", [{}, {"root": None, "download": False}])
def test_neither_root_nor_download_says_what_to_pass(params):
    with pytest.raises(DatasetError, match=r"root:.*download: true"):
        TEdBench(params)


def test_root_without_input_list(tmp_path):
    with pytest.raises(DatasetError, match="has no input_list.json"):
        TEdBench({"root": str(tmp_path)})


def test_root_and_download_together_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match="not both"):
        TEdBench({"root": str(tmp_path), "download": True})


def test_missing_image_fails_only_its_sample(shared, tmp_path):
    data = (shared / "originals" / SMALL_IMAGE).read_bytes()
    root = _make_root(tmp_path, [(SMALL_IMAGE, "A beach."), ("gone.png", "Gone.")], {SMALL_IMAGE: data})
    dataset = TEdBench({"root": str(root)})
    ok, missing = dataset.sample_ids()
    assert dataset.load(ok).image.mode == "RGB"
    with pytest.raises(DatasetError, match="gone.png"):
        dataset.load(missing)


def test_corrupt_image_names_the_file(tmp_path):
    root = _make_root(tmp_path, [("broken.jpeg", "Broken.")], {"broken.jpeg": b"\x00garbage" * 100})
    dataset = TEdBench({"root": str(root)})
    with pytest.raises(DatasetError, match="broken.jpeg"):
        dataset.load(dataset.sample_ids()[0])


def test_malformed_input_list(tmp_path):
    (tmp_path / "input_list.json").write_text('{"img_name": "a.png"}')
    with pytest.raises(DatasetError, match="input_list.json"):
        TEdBench({"root": str(tmp_path)}).sample_ids()


def test_download_from_file_url_verifies_and_reuses_the_cache(shared, full, tmp_path):
    cache = tmp_path / "cache"
    dataset = TEdBench({"download": True, "cache_dir": str(cache), "base_url": shared.as_uri()})
    assert not cache.exists()  # constructing downloads nothing; the first use does
    assert dataset.sample_ids() == full.sample_ids()
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) == sorted(SHA256)
    assert dataset.load("000-dog2_standing.png").image.mode == "RGB"
    # Everything is present and verified: a dead URL is never contacted.
    again = TEdBench({"download": True, "cache_dir": str(cache), "base_url": (tmp_path / "nowhere").as_uri()})
    assert len(again.sample_ids()) == 100


def test_a_bad_cached_file_is_fetched_again(shared, tmp_path):
    cache = download(tmp_path / "cache", shared.as_uri())
    (cache / "originals" / "zebra.jpeg").write_bytes(b"stale")
    download(cache, shared.as_uri())
    assert (cache / "originals" / "zebra.jpeg").read_bytes() == (shared / "originals" / "zebra.jpeg").read_bytes()


def test_tampered_file_raises_and_leaves_nothing_bad(shared, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(shared, mirror)
    victim = mirror / "originals" / "apples.jpeg"
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="checksum mismatch") as e:
        TEdBench({"download": True, "cache_dir": str(cache), "base_url": mirror.as_uri()}).sample_ids()
    message = str(e.value)
    assert "originals/apples.jpeg" in message and SHA256["originals/apples.jpeg"] in message
    assert not (cache / "originals" / "apples.jpeg").exists()
    assert not list(cache.rglob("*.part"))


def test_missing_remote_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot download tedbench file"):
        download(tmp_path / "cache", (tmp_path / "empty").as_uri())


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("EDITSWEEP_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "editsweep" / "tedbench"
    monkeypatch.setenv("EDITSWEEP_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "tedbench"
    assert cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"


def _image_bytes(colour: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def _raw_root(root: Path, entries: list, files: dict[str, bytes]) -> Path:
    """A TEdBench folder whose input_list.json holds `entries` exactly as given (malformed ones too)."""
    (root / "originals").mkdir(parents=True)
    (root / "input_list.json").write_text(json.dumps(entries))
    for name, data in files.items():
        (root / "originals" / name).write_bytes(data)
    return root


def test_entries_naming_files_outside_originals_are_refused_without_reading_them(tmp_path, outside, opened):
    root = tmp_path / "ted"
    entries = [
        {"img_name": "a.png", "target_text": "A."},
        {"img_name": "../../secret/x.png", "target_text": "Up."},
        {"img_name": str(outside), "target_text": "Absolute."},
        {"img_name": "link.png", "target_text": "A link leading outside."},
        {"img_name": "../input_list.json", "target_text": "Inside the root, outside originals/."},
        {"img_name": "sub/../a.png", "target_text": "Stays inside."},
    ]
    _raw_root(root, entries, {"a.png": _image_bytes((1, 2, 3))})
    (root / "originals" / "link.png").symlink_to(outside)
    dataset = TEdBench({"root": str(root)})
    ids = dataset.sample_ids()
    assert ids == [f"{i:03d}-{e['img_name']}" for i, e in enumerate(entries)]  # every entry is planned
    assert dataset.load(ids[0]).image.getpixel((0, 0)) == (1, 2, 3)
    for i in (1, 2, 3, 4):
        expected = rf"entry {i}: .*{re.escape(entries[i]['img_name'])}.*(outside|absolute)"
        with pytest.raises(DatasetError, match=expected):
            dataset.load(ids[i])
    assert outside.resolve() not in opened and (root / "input_list.json").resolve() not in opened
    assert dataset.load(ids[5]).image.getpixel((0, 0)) == (1, 2, 3)  # `..` that stays inside is fine


def test_a_malformed_entry_fails_only_its_sample(tmp_path):
    entries = [
        {"img_name": "a.png", "target_text": "A."},
        {"img_name": "b.png", "target_text": None},
        {"img_name": "c.png"},
        {"target_text": "No image."},
        "not an object",
        {"img_name": 3, "target_text": "A number."},
        {"img_name": "b.png", "target_text": "B."},
    ]
    root = _raw_root(tmp_path / "ted", entries, {"a.png": _image_bytes((1, 2, 3)), "b.png": _image_bytes((4, 5, 6))})
    dataset = TEdBench({"root": str(root)})
    ids = dataset.sample_ids()
    # Good entries keep their ids; an entry without a string img_name gets one from its index.
    assert ids == ["000-a.png", "001-b.png", "002-c.png", "003-invalid-entry", "004-invalid-entry",
                   "005-invalid-entry", "006-b.png"]
    assert dataset.load("000-a.png").target_prompt == "A."
    assert dataset.load("006-b.png").image.getpixel((0, 0)) == (4, 5, 6)
    problems = {1: "target_text: Input should be a valid string", 2: "target_text: Field required",
                3: "img_name: Field required", 4: "valid dictionary", 5: "img_name: Input should be a valid string"}
    for i, problem in problems.items():
        with pytest.raises(DatasetError, match=rf"input_list.json entry {i} is malformed: .*{problem}"):
            dataset.load(ids[i])


def test_a_malformed_source_prompt_fails_only_the_samples_of_its_image(tmp_path):
    root = _raw_root(
        tmp_path / "ted",
        [{"img_name": "a.png", "target_text": "A."}, {"img_name": "b.png", "target_text": "B."}],
        {"a.png": _image_bytes((1, 2, 3)), "b.png": _image_bytes((4, 5, 6))},
    )
    prompts = tmp_path / "sources.json"
    prompts.write_text(json.dumps({"a.png": "A photo.", "b.png": None}))
    dataset = TEdBench({"root": str(root), "source_prompts": str(prompts)})
    assert dataset.load("000-a.png").source_prompt == "A photo."
    with pytest.raises(DatasetError, match=r"sources.json.*'b.png'.*not a string"):
        dataset.load("001-b.png")
    prompts.write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(DatasetError, match="sources.json must be a JSON object"):
        TEdBench({"root": str(root), "source_prompts": str(prompts)}).sample_ids()


def test_an_input_list_that_is_not_a_list_is_a_whole_dataset_error(tmp_path):
    (tmp_path / "input_list.json").write_text(json.dumps({"img_name": "a.png", "target_text": "A."}))
    with pytest.raises(DatasetError, match=r"input_list.json must be a JSON list.*got dict"):
        TEdBench({"root": str(tmp_path)}).sample_ids()


def test_a_worker_stores_rows_for_good_pairs_and_error_rows_for_bad_ones(tmp_path, outside):
    """End to end in one process (as tests/bench/test_worker.py's run_units): the planner lists every
    entry, the worker loads each, and only the good pairs become ok rows; nothing from outside the
    dataset reaches the run's inputs/ or images/."""
    from editsweep.bench.plan import plan
    from editsweep.bench.spec import load_spec
    from editsweep.bench.store import RunStore
    from editsweep.bench.worker import SweepWorker

    entries = [
        {"img_name": "a.png", "target_text": "A."},
        {"img_name": "../../secret/x.png", "target_text": "Outside."},
        {"img_name": "a.png", "target_text": None},
        {"img_name": "b.png", "target_text": "B."},
    ]
    root = _raw_root(tmp_path / "ted", entries, {"a.png": _image_bytes((1, 2, 3)), "b.png": _image_bytes((4, 5, 6))})
    spec = load_spec(
        {
            "name": "ted",
            "datasets": [{"name": "tedbench", "params": {"root": str(root)}}],
            "methods": [{"name": "copy"}],
            "metrics": {"psnr": {}},
            "execution": {"batch_size": 4},
        }
    )
    run_dir = tmp_path / "run"
    tasks, units = plan(spec)
    assert len(tasks) == 4
    worker = SweepWorker(spec, str(run_dir), "run-test")
    store = RunStore(str(run_dir))
    for unit in units:
        store.write_rows(worker.process(unit).rows)
    rows = store.read_results().set_index("sample_id")
    assert list(rows.loc[["000-a.png", "003-b.png"], "status"]) == ["ok", "ok"]
    assert rows.loc["001-../../secret/x.png", "status"] == "error"
    assert "entry 1" in rows.loc["001-../../secret/x.png", "error"]
    assert "outside" in rows.loc["001-../../secret/x.png", "error"]
    assert rows.loc["002-a.png", "status"] == "error" and "entry 2 is malformed" in rows.loc["002-a.png", "error"]
    stored = [RunStore(str(run_dir)).read_image(p) for p in store.list_files("inputs")]
    assert len(stored) == 2 and {im.getpixel((0, 0)) for im in stored} == {(1, 2, 3), (4, 5, 6)}


def test_originals_may_be_a_link_to_another_disk(tmp_path):
    """The layout's own folder is resolved first (datasets/entries.py): only entries are confined."""
    store = tmp_path / "big-disk" / "originals"
    store.mkdir(parents=True)
    (store / "a.png").write_bytes(_image_bytes((7, 8, 9)))
    root = tmp_path / "ted"
    root.mkdir()
    (root / "input_list.json").write_text(json.dumps([{"img_name": "a.png", "target_text": "A."}]))
    (root / "originals").symlink_to(store)
    assert TEdBench({"root": str(root)}).load("000-a.png").image.getpixel((0, 0)) == (7, 8, 9)
