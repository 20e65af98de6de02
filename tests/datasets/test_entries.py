"""`resolve_inside` (every dataset reads its entries' files through it) and per-entry validation."""

from __future__ import annotations


import pytest
from pydantic import BaseModel

from editsweep.datasets.base import DatasetError
from editsweep.datasets.entries import resolve_inside, validate_entry


def test_paths_inside_resolve_and_paths_leading_out_are_refused(tmp_path):
    base = tmp_path / "data"
    (base / "sub").mkdir(parents=True)
    (base / "sub" / "a.png").touch()
    (tmp_path / "out.png").touch()
    assert resolve_inside(base, "sub/a.png", "e") == (base / "sub" / "a.png").resolve()
    assert resolve_inside(base, "sub/../sub/a.png", "e") == (base / "sub" / "a.png").resolve()
    assert resolve_inside(base, "missing.png", "e") == (base / "missing.png").resolve()  # not found later
    for rel in ("../out.png", "sub/../../out.png", ".", "sub/.."):
        with pytest.raises(DatasetError, match=r"entry 7: .* leads outside"):
            resolve_inside(base, rel, "entry 7")
    with pytest.raises(DatasetError, match="is an absolute path"):
        resolve_inside(base, str(tmp_path / "out.png"), "entry 7")
    for rel in ("", None, 3, "a\x00b"):
        with pytest.raises(DatasetError, match="not a non-empty path string"):
            resolve_inside(base, rel, "entry 7")


def test_symlinks_are_judged_by_where_they_lead(tmp_path):
    base, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    base.mkdir()
    elsewhere.mkdir()
    (elsewhere / "x.png").touch()
    (base / "inner.png").touch()
    (base / "out.png").symlink_to(elsewhere / "x.png")
    (base / "in.png").symlink_to(base / "inner.png")
    (base / "loop").symlink_to(base / "loop")
    with pytest.raises(DatasetError, match="leads outside"):
        resolve_inside(base, "out.png", "e")
    assert resolve_inside(base, "in.png", "e") == (base / "inner.png").resolve()
    with pytest.raises(DatasetError, match="cannot resolve|leads outside"):
        resolve_inside(base, "loop/x.png", "e")
    # The folder itself may be a link (a layout folder kept on another disk): resolved first.
    link = tmp_path / "link-to-elsewhere"
    link.symlink_to(elsewhere)
    assert resolve_inside(link, "x.png", "e") == (elsewhere / "x.png").resolve()


def test_validate_entry_names_the_entry_and_every_wrong_field():
    class Pair(BaseModel):
        name: str
        size: int

    assert validate_entry(Pair, {"name": "a", "size": 2, "extra": 1}, "e").size == 2
    with pytest.raises(DatasetError, match=r"^list.json entry 4 is malformed: name: Field required; size: .*got 'x'"):
        validate_entry(Pair, {"size": "x"}, "list.json entry 4")
    with pytest.raises(DatasetError, match=r"size: .*\(got \[0, 1, 2, 3, \.\.\.\]\)"):
        validate_entry(Pair, {"name": "a", "size": list(range(10_000))}, "e")  # long values are shortened
