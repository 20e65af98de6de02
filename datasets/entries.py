"""Shared checks for the entries of dataset files: paths that stay inside their folder, and
per-entry validation whose failure is that sample's error, not the whole dataset's.

Every dataset reads the files its entries name through `resolve_inside`, so that an entry
(`img_name: ../../x.png`, an absolute path, a link leading elsewhere) never makes a worker read a
file outside the dataset's folder. Symlinks are followed and judged by where they lead: the fixed
folder of the published layout (e.g. TEdBench's `originals/`) is resolved first, so it may itself
be a link to another disk, but a path taken from an entry must resolve to a file inside that
resolved folder; a link inside it that points outside is refused like `..`.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from editsweep.datasets.base import DatasetError

M = TypeVar("M", bound=BaseModel)

# Values in messages are shortened (a PIE-Bench mask is a list of thousands of numbers).
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxdict = 4


def resolve_inside(base: str | Path, rel: object, entry: str) -> Path:
    """`base / rel` with symlinks resolved, if it is a path strictly inside `base`.

    Raises `DatasetError` naming `entry` (which entry of which file asked for it) and `rel` when
    `rel` is not a relative path string or resolves outside `base` (through `..` or a symlink).
    No file is opened here: resolving only looks up the path's components and links.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise DatasetError(f"{entry}: the file name {rel!r} is not a non-empty path string")
    folder = Path(base).expanduser()
    if Path(rel).is_absolute():
        raise DatasetError(
            f"{entry}: {rel!r} is an absolute path; dataset files are read only from inside {folder}, "
            "so give the path relative to it"
        )
    try:
        inside = folder.resolve()
        target = (inside / rel).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise DatasetError(f"{entry}: cannot resolve {rel!r} inside {folder}: {e}") from e
    if target == inside or not target.is_relative_to(inside):
        raise DatasetError(
            f"{entry}: {rel!r} leads outside {folder} (it resolves to {target}); dataset files are read only "
            "from inside their folder, so the entry is refused"
        )
    return target


def validate_entry(model: type[M], entry: Any, where: str) -> M:
    """`entry` validated by `model`; `DatasetError` naming `where` and every field that is wrong."""
    try:
        return model.model_validate(entry)
    except ValidationError as e:
        raise DatasetError(f"{where} is malformed: {describe_errors(e)}") from None


def describe_errors(error: ValidationError) -> str:
    """A pydantic validation error in one line: `field: message (got value)` per problem."""
    parts = []
    for err in error.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "the entry"
        got = "" if err["type"] == "missing" else f" (got {_SHORT.repr(err['input'])})"
        parts.append(f"{field}: {err['msg']}{got}")
    return "; ".join(parts)
