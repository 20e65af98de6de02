"""The ImageNet FlexIT dataset: query list, both layouts, prompts, meta and clear errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from editsweep.datasets.base import DatasetError, sample_labels
from editsweep.datasets.imagenet import ImageNetFlexit, download_queries, imagenet_wnids

SHARED_QUERIES = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet_flexit" / "queries.csv"
needs_shared_queries = pytest.mark.skipif(
    not SHARED_QUERIES.is_file(), reason=f"the shared copy of FlexIT's query list is not at {SHARED_QUERIES}"
)


@needs_shared_queries
def test_the_real_query_list_splits_and_class_order():
    full = ImageNetFlexit({"queries": str(SHARED_QUERIES)})
    dev = ImageNetFlexit({"queries": str(SHARED_QUERIES), "split": "dev", "limit": 5})
    assert len(full.sample_ids()) == 1092 and len(full.target_classes) == 273
    assert len(dev.sample_ids()) == 5 and not set(dev.sample_ids()) & set(full.sample_ids())
    # target_id/source_id use the standard sorted-wnid order: the source wnid in each path agrees with it.
    wnids = imagenet_wnids()
    q = full.all_queries
    assert (q["path"].str.split("/").str[0] == q["source_id"].map(wnids.__getitem__)).all()


def test_planning_needs_only_the_query_list(imagenet_layout, tmp_path):
    ds = ImageNetFlexit({"queries": str(imagenet_layout["queries"]), "root": str(tmp_path / "absent")})
    assert ds.sample_ids() == imagenet_layout["ids"]
    with pytest.raises(DatasetError, match="absent does not exist"):
        ds.load(ds.sample_ids()[0])


def test_folder_layout_sample(imagenet_layout):
    ds = ImageNetFlexit(
        {
            "queries": str(imagenet_layout["queries"]),
            "root": str(imagenet_layout["val"]),
            "prompt_template": "a photo of a {}",
        }
    )
    sid = ds.sample_ids()[0]
    q = ds.queries.loc[int(sid)]
    sample = ds.load(sid)
    assert sample.image.size == (80, 60) and sample.image.mode == "RGB"
    assert sample.target_prompt == f"a photo of a {q['target']}" and sample.source_prompt == q["source"]
    labels = sample_labels(sample)
    assert labels["target_id"] == str(q["target_id"]) and labels["target_class"] == q["target"]
    assert labels["target_wnid"] in imagenet_layout["target_wnids"] and "target_classes" not in labels
    assert len(sample.meta["target_classes"]) == 3


def test_flat_layout_with_label_file(imagenet_layout, tmp_path):
    flat = tmp_path / "val"
    flat.mkdir()
    rows = []
    for f in imagenet_layout["val"].glob("*/*.JPEG"):
        shutil.copy(f, flat / f.name)
        rows.append({"ImageId": f.stem, "PredictionString": f"{f.parent.name} 1 2 3 4"})
    labels = tmp_path / "LOC_val_solution.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    params = {"queries": str(imagenet_layout["queries"]), "root": str(flat), "layout": "flat", "labels": str(labels)}
    ds = ImageNetFlexit(params)
    assert all(ds.load(i).image.size == (80, 60) for i in ds.sample_ids())

    rows[0]["PredictionString"] = "n99999999 1 2 3 4"
    pd.DataFrame(rows).to_csv(labels, index=False)
    wrong = rows[0]["ImageId"]
    sid = next(i for i in ds.sample_ids() if wrong in ds.queries.loc[int(i), "path"])
    with pytest.raises(DatasetError, match=f"{wrong}.JPEG is labelled n99999999"):
        ImageNetFlexit(params).load(sid)


def test_a_missing_image_names_the_file(imagenet_layout, tmp_path):
    root = tmp_path / "val"
    shutil.copytree(imagenet_layout["val"], root)
    ds = ImageNetFlexit({"queries": str(imagenet_layout["queries"]), "root": str(root)})
    sid = ds.sample_ids()[1]
    rel = ds.queries.loc[int(sid), "path"]
    (root / rel).unlink()
    with pytest.raises(DatasetError, match=f"query {sid} not found: {root / rel}"):
        ds.load(sid)


def test_a_malformed_query_list_names_the_file_and_columns(imagenet_layout, tmp_path):
    bad = tmp_path / "queries.csv"
    pd.read_csv(imagenet_layout["queries"], index_col=0).head(3).drop(columns=["target_id", "is_test"]).to_csv(bad)
    with pytest.raises(DatasetError, match=rf"{bad} lacks column\(s\) target_id, is_test"):
        ImageNetFlexit({"queries": str(bad)}).sample_ids()
    with pytest.raises(DatasetError, match="cannot read the imagenet query list"):
        ImageNetFlexit({"queries": str(tmp_path / "none.csv")}).sample_ids()
    with pytest.raises(DatasetError, match="needs FlexIT's query list"):
        ImageNetFlexit({})


@needs_shared_queries
def test_download_is_checked_against_the_pinned_sha256(tmp_path):
    url = SHARED_QUERIES.as_uri()  # a file:// URL stands in for the pinned GitHub file
    path = download_queries(tmp_path / "cache", url)
    assert path.read_bytes() == SHARED_QUERIES.read_bytes()
    tampered = tmp_path / "tampered.csv"
    tampered.write_bytes(SHARED_QUERIES.read_bytes() + b"\n")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        download_queries(tmp_path / "cache2", tampered.as_uri())
    assert not (tmp_path / "cache2" / "queries.csv").exists()


@needs_shared_queries
def test_the_imagenet_config_plans_without_images(tmp_path, monkeypatch, capsys):
    from editsweep.bench.cli import main

    cache = tmp_path / "cache" / "imagenet_flexit"
    cache.mkdir(parents=True)
    shutil.copy(SHARED_QUERIES, cache / "queries.csv")  # a cached copy with the pinned hash: no download
    monkeypatch.setenv("EDITSWEEP_CACHE", str(tmp_path / "cache"))
    config = Path(__file__).resolve().parents[2] / "configs" / "imagenet-flexit.yaml"
    assert main(["run", str(config), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "copy: 1092 tasks, 1092 groups" in out and "sdedit: 6552 tasks, 1092 groups" in out


def _rewrite(queries: Path, dest: Path, change) -> Path:
    """A copy of the query list at `dest`, its cells read as text and changed by `change(df)`."""
    df = pd.read_csv(queries, index_col=0, dtype=str, keep_default_na=False)
    change(df)
    df.to_csv(dest)
    return dest


@pytest.mark.parametrize("escape", ["../secret/x.png", "absolute", "link"])
def test_a_query_path_outside_root_is_refused_without_reading_it(imagenet_layout, tmp_path, outside, opened, escape):
    root = tmp_path / "val"
    shutil.copytree(imagenet_layout["val"], root)
    first = pd.read_csv(imagenet_layout["queries"], index_col=0)["path"].iloc[0]
    if escape == "absolute":
        escape = str(outside)
    elif escape == "link":
        escape = f"{first.split('/')[0]}/link.JPEG"
        (root / escape).symlink_to(outside)

    def change(df):
        df.iloc[1, df.columns.get_loc("path")] = escape

    queries = _rewrite(imagenet_layout["queries"], tmp_path / "queries.csv", change)
    ds = ImageNetFlexit({"queries": str(queries), "root": str(root)})
    sid = ds.sample_ids()[1]
    with pytest.raises(DatasetError, match=rf"query {sid}\b.*{re.escape(repr(escape))}.*(outside|absolute)"):
        ds.load(sid)
    assert ds.load(ds.sample_ids()[0]).image.size == (80, 60)
    assert outside.resolve() not in opened


def test_a_flat_layout_link_leading_outside_root_is_refused(imagenet_layout, tmp_path, outside, opened):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in imagenet_layout["val"].glob("*/*.JPEG"):
        shutil.copy(f, flat / f.name)
    ds = ImageNetFlexit({"queries": str(imagenet_layout["queries"]), "root": str(flat), "layout": "flat"})
    victim = ds.sample_ids()[2]
    name = Path(ds.queries.loc[int(victim), "path"]).name
    (flat / name).unlink()
    (flat / name).symlink_to(outside)
    with pytest.raises(DatasetError, match=rf"query {victim}\b.*{name}.*outside"):
        ds.load(victim)
    assert outside.resolve() not in opened


def test_a_malformed_query_row_fails_only_its_sample(imagenet_layout, tmp_path):
    def change(df):
        df.iloc[1, df.columns.get_loc("source_id")] = "abc"
        df.iloc[2, df.columns.get_loc("target_id")] = ""
        df.iloc[4, df.columns.get_loc("is_test")] = "maybe"
        df.iloc[5, df.columns.get_loc("target_id")] = "1000"
        df.index = [*df.index[:3], "x", *df.index[4:]]

    queries = _rewrite(imagenet_layout["queries"], tmp_path / "queries.csv", change)
    ds = ImageNetFlexit({"queries": str(queries), "root": str(imagenet_layout["val"])})
    ids = ds.sample_ids()
    assert ids == ["3000", "3007", "3014", "3028", "3035", "row-3"]  # query ids, then rows without one
    assert ds.load("3000").target_prompt == "class 1"
    problems = {
        "3007": r"row 1 \(query id 3007\) is malformed: source_id: Input should be a valid integer",
        "3014": r"row 2 \(query id 3014\) is malformed: target_id: Input should be a valid integer",
        "row-3": r"row 3 \(query id 'x'\): the query id is not an integer",
        "3028": r"row 4 \(query id 3028\) is malformed: is_test: Input should be a valid boolean",
        "3035": r"row 5 \(query id 3035\) is malformed: target_id: Input should be less than or equal to 999",
    }
    for sample_id, problem in problems.items():
        with pytest.raises(DatasetError, match=rf"queries.csv {problem}"):
            ds.load(sample_id)
    # A row whose split cannot be read is in every split, so that its error is seen.
    assert ImageNetFlexit({"queries": str(queries), "split": "dev"}).sample_ids() == ["3028"]
    assert ImageNetFlexit({"queries": str(queries), "limit": 2}).sample_ids() == ["3000", "3007"]


def test_a_repeated_query_id_fails_only_that_id(imagenet_layout, tmp_path):
    def change(df):
        df.index = ["3000" if i == "3007" else i for i in df.index]

    queries = _rewrite(imagenet_layout["queries"], tmp_path / "queries.csv", change)
    ds = ImageNetFlexit({"queries": str(queries), "root": str(imagenet_layout["val"])})
    assert ds.sample_ids() == ["3000", "3014", "3021", "3028", "3035"]
    with pytest.raises(DatasetError, match=r"queries.csv rows 0 and 1 share the query id 3000"):
        ds.load("3000")
    assert ds.load("3014").image.size == (80, 60)
