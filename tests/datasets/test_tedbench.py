"""TEdBench: the 100 pairs of the shared copy, the verified download (from file:// URLs), and its errors."""

from __future__ import annotations

import json
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
