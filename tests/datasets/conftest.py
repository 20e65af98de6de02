"""Fixtures shared by the dataset tests: a record of every image file a dataset opens, and a file
outside the dataset folder that no entry may make it read."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def opened(monkeypatch) -> list[Path]:
    """The resolved paths of the image files opened through PIL while the test runs."""
    paths: list[Path] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        if isinstance(fp, (str, Path)):
            paths.append(Path(fp).resolve())
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return paths


@pytest.fixture
def outside(tmp_path) -> Path:
    """A valid image in `tmp_path/secret/`, beside (outside) the dataset folders the tests build."""
    path = tmp_path / "secret" / "x.png"
    path.parent.mkdir()
    Image.new("RGB", (16, 12), (200, 10, 10)).save(path)
    return path
