"""The ImageNet FlexIT dataset: query list, both layouts, prompts, meta and clear errors."""

from __future__ import annotations

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
