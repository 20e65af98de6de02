"""ImageNet class-to-class edits with the FlexIT query list (Couairon et al., CVPR 2022; used by DiffEdit, PTI).

The query list is `dataset/queries.csv` of facebookresearch/SemanticImageTranslation at `COMMIT`:
one row per query, indexed by the query id, with `path` (`<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG`),
`source`, `source_id`, `target`, `target_id` (class indices in the standard sorted-wnid order) and
`is_test`. Each split has 1,092 queries: 273 target classes x 4. Pass `queries:` (a local copy) or
`download: true` (fetched once into a cache, checked against its sha256).

The images are ILSVRC2012 validation images from a local `root`, in one of two layouts:
- `folders`: per-class wnid folders, `root/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG` (the query paths as is);
- `flat`: the official `ILSVRC2012_img_val.tar` extracted, all 50,000 JPEGs in `root`. Validation
  file names are unique, so the query's file name finds the image; when `labels:` names the
  official `LOC_val_solution.csv`, each image's class is checked against the query's source wnid.

Each row of the query list is checked on its own: a malformed row fails only its sample (see
`read_queries`), and a query path (or a symlink it finds) leading outside `root` is refused (see
`datasets/entries.py`).

Planning reads only the query list (`sample_ids` never touches `root`), so `--dry-run` works
without the images. Prompts are the class names of the query list through `prompt_template`
(default: the bare class name, the text query of FlexIT's and DiffEdit's ImageNet experiments).
The target classes of the split travel in each sample's meta (`target_classes`) for the
restricted-argmax accuracy; `target_wnid` names the class whose reference mean CSFID uses.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from editsweep.datasets.base import Dataset, DatasetError, DatasetParams, Sample, register_dataset
from editsweep.datasets.entries import resolve_inside, validate_entry
from editsweep.datasets.images import load_rgb

COMMIT = "7aece383f04e12307372ba8c729a556dfaacd8e8"
QUERIES_URL = (
    f"https://raw.githubusercontent.com/facebookresearch/SemanticImageTranslation/{COMMIT}/dataset/queries.csv"
)
QUERIES_SHA256 = "153fc0ef936f7239b3fc525897e91adad16900c6e3c94a1c7d4f2021543219c6"
QUERY_COLUMNS = ("path", "source", "source_id", "target", "target_id", "is_test")


class ImageNetParams(DatasetParams):
    """Where the query list and the validation images are, which split, and how prompts are written."""

    root: str | None = Field(None, description="ILSVRC2012 val folder; needed to load images, not to plan")
    layout: Literal["folders", "flat"] = Field("folders", description="per-class wnid folders, or all files in root")
    labels: str | None = Field(None, description="flat layout: LOC_val_solution.csv, to check each image's class")
    queries: str | None = Field(None, description="a local queries.csv (else download: true)")
    download: bool = Field(False, description="fetch queries.csv at the pinned commit into the cache (sha256-checked)")
    cache_dir: str | None = Field(
        None, description="default $EDITSWEEP_CACHE/imagenet_flexit or ~/.cache/editsweep/..."
    )
    split: Literal["test", "dev", "all"] = Field("test", description="is_test=True rows, False rows, or both")
    limit: int | None = Field(None, ge=1, description="the first N queries of the split, in query-id order")
    prompt_template: str = Field("{}", description="target prompt from the target class name")
    source_template: str = Field("{}", description="source prompt from the source class name")
    reference_stats: str | None = Field(
        None, description="reference statistics file (editsweep reference-stats) used by the report's SFID/CSFID/FID"
    )

    @field_validator("prompt_template", "source_template")
    @classmethod
    def _one_placeholder(cls, template: str) -> str:
        if template.count("{}") != 1:
            raise ValueError(f"a prompt template needs exactly one '{{}}' for the class name, got {template!r}")
        return template


@register_dataset
class ImageNetFlexit(Dataset):
    """FlexIT's ImageNet class-to-class queries over a local ILSVRC2012 val folder; ids are query ids."""

    name = "imagenet"
    Params = ImageNetParams
    params: ImageNetParams

    def __init__(self, params: ImageNetParams | dict[str, Any] | None = None) -> None:
        super().__init__(params)
        p = self.params
        if p.queries is not None and p.download:
            raise DatasetError("imagenet: pass either `queries: <path to queries.csv>` or `download: true`, not both")
        if p.queries is None and not p.download:
            raise DatasetError(
                "imagenet needs FlexIT's query list: pass `queries: <path to queries.csv>` (a local copy of "
                f"dataset/queries.csv at commit {COMMIT}) or `download: true` to fetch it from {QUERIES_URL}"
            )
        if p.labels is not None and p.layout != "flat":
            raise DatasetError("imagenet: `labels:` (LOC_val_solution.csv) is only used with `layout: flat`")

    @cached_property
    def queries_path(self) -> Path:
        """The query list: `queries`, or the cached verified download."""
        if self.params.queries is not None:
            return Path(self.params.queries).expanduser()
        return download_queries(cache_dir(self.params.cache_dir))

    @cached_property
    def _query_list(self) -> QueryList:
        return read_queries(self.queries_path)

    @cached_property
    def all_queries(self) -> pd.DataFrame:
        """Every well-formed row of the query list, indexed by query id (both splits)."""
        return self._query_list.rows

    @cached_property
    def _split_ids(self) -> list[str]:
        """The sample ids of the split, in query-id order, at most `limit`.

        Malformed rows are planned like the others (their `load` raises): in the split their
        `is_test` names, or in every split when it cannot be read, so that their error is seen.
        """
        wanted = None if self.params.split == "all" else self.params.split == "test"
        rows = self.all_queries
        if wanted is not None:
            rows = rows[rows["is_test"] == wanted]
        order = [((0, int(i), 0), str(i)) for i in rows.index]
        order += [
            (bad.order, sample_id)
            for sample_id, bad in self._query_list.malformed.items()
            if wanted is None or bad.is_test in (wanted, None)
        ]
        return [sample_id for _, sample_id in sorted(order)][: self.params.limit]

    @cached_property
    def queries(self) -> pd.DataFrame:
        """The well-formed rows of the split, in query-id order, among the first `limit` queries."""
        chosen = [int(i) for i in self._split_ids if i not in self._query_list.malformed]
        return self.all_queries.loc[chosen]

    @cached_property
    def target_classes(self) -> tuple[int, ...]:
        """The target class ids the accuracy's argmax is restricted to.

        FlexIT's eval.py takes them from the whole query file (`sorted(set(df.target_id))`), not
        from the evaluated images; both splits have the same 273, and `limit` does not shrink them.
        Malformed rows are left out (each class has 4 queries, so one bad row removes no class).
        """
        return tuple(sorted(int(c) for c in self.all_queries["target_id"].unique()))

    @cached_property
    def _flat_labels(self) -> dict[str, str]:
        """Flat layout: image stem -> wnid from LOC_val_solution.csv ({} without `labels`)."""
        if self.params.labels is None:
            return {}
        path = Path(self.params.labels).expanduser()
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise DatasetError(f"cannot read ImageNet val labels {path}: {e}") from e
        if not rows or not {"ImageId", "PredictionString"} <= set(rows[0]):
            raise DatasetError(f"{path} is not LOC_val_solution.csv: it needs columns ImageId, PredictionString")
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows if r["PredictionString"]}

    def sample_ids(self) -> list[str]:
        """The query ids of the split (reads only the query list); `row-<n>` for a row without one."""
        return list(self._split_ids)

    def image_path(self, query_path: str, entry: str = "imagenet query") -> Path:
        """Where the image of a query path lives under `root` in the chosen layout.

        Raises `DatasetError` naming `entry` when the query path, or the file it finds (through
        a symlink), leads outside `root`.
        """
        if self.params.root is None:
            raise DatasetError("imagenet needs `root:` (a local ILSVRC2012 val folder) to load images")
        root = Path(self.params.root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"ImageNet val root {root} does not exist: set `root:` to your ILSVRC2012 val folder")
        path = resolve_inside(root, query_path, entry)
        return path if self.params.layout == "folders" else resolve_inside(root, Path(query_path).name, entry)

    def load(self, sample_id: str) -> Sample:
        """The query's validation image as RGB, prompts from the class names, classes in meta.

        Raises `DatasetError` naming the row when it is malformed or its path leads outside `root`.
        """
        bad = self._query_list.malformed.get(sample_id)
        if bad is not None and sample_id in self._split_ids:
            raise DatasetError(bad.problem)
        try:
            q = self.queries.loc[int(sample_id)]
        except (KeyError, ValueError):
            raise DatasetError(f"unknown imagenet query id {sample_id!r} in the {self.params.split} split") from None
        wnid = q["path"].split("/")[0]
        path = self.image_path(q["path"], f"{self.queries_path} query {sample_id} (path)")
        if not path.is_file():
            raise DatasetError(
                f"ImageNet val image for query {sample_id} not found: {path} (layout: {self.params.layout}; "
                f"query path {q['path']})"
            )
        labelled = self._flat_labels.get(Path(q["path"]).stem)
        if labelled is not None and labelled != wnid:
            raise DatasetError(
                f"{path} is labelled {labelled} in {self.params.labels}, but query {sample_id} expects {wnid}"
            )
        target_wnid = imagenet_wnids()[int(q["target_id"])]
        return Sample(
            id=sample_id,
            image=load_rgb(path),
            target_prompt=self.params.prompt_template.format(q["target"]),
            source_prompt=self.params.source_template.format(q["source"]),
            meta={
                "source_class": q["source"],
                "source_id": int(q["source_id"]),
                "source_wnid": wnid,
                "target_class": q["target"],
                "target_id": int(q["target_id"]),
                "target_wnid": target_wnid,
                "target_classes": self.target_classes,
            },
        )


class _Query(BaseModel):
    """One row of the query list (class indices in the standard sorted-wnid order)."""

    path: str = Field(min_length=1)
    source: str = Field(min_length=1)
    source_id: int = Field(ge=0, le=999)
    target: str = Field(min_length=1)
    target_id: int = Field(ge=0, le=999)
    is_test: bool


_IS_TEST: TypeAdapter[bool] = TypeAdapter(bool)


@dataclass(frozen=True)
class MalformedQuery:
    """A row of the query list that cannot be a sample: why, its split if readable, where it sorts."""

    problem: str
    is_test: bool | None
    order: tuple[int, int, int]  # (0, query id, row) among the query ids, or (1, row, 0) after them


@dataclass(frozen=True)
class QueryList:
    """A query list read row by row: the well-formed rows and, by sample id, the malformed ones."""

    rows: pd.DataFrame
    malformed: dict[str, MalformedQuery]


def read_queries(path: Path) -> QueryList:
    """Read a FlexIT query list, checking each row on its own.

    A row that is malformed (a cell of the wrong type, a class index out of range, a query id that
    is not an integer or is repeated) becomes a `MalformedQuery` naming its row; the well-formed
    rows are indexed by query id with integer class ids. A file that cannot be read as CSV, or lacks
    columns, raises `DatasetError` naming the file.
    """
    try:
        # Every cell as text (empty stays ""): the rows are typed one by one below.
        df = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DatasetError(f"cannot read the imagenet query list {path}: {e}") from e
    missing = [c for c in QUERY_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"imagenet query list {path} lacks column(s) {', '.join(missing)}: FlexIT's queries.csv has an unnamed "
            f"query-id column then {', '.join(QUERY_COLUMNS)}"
        )
    rows_of: dict[int, list[int]] = {}
    for row, raw_id in enumerate(df.index):
        try:
            rows_of.setdefault(int(raw_id), []).append(row)
        except ValueError:
            pass
    good: dict[int, _Query] = {}
    malformed: dict[str, MalformedQuery] = {}
    for row, (raw_id, cells) in enumerate(zip(df.index, df[list(QUERY_COLUMNS)].to_dict("records"), strict=True)):
        try:
            query_id: int | None = int(raw_id)
        except ValueError:
            query_id = None
        where = f"{path} row {row} (query id {raw_id if query_id is not None else repr(raw_id)})"
        is_test = _readable_is_test(cells["is_test"])
        if query_id is None:
            problem = f"{where}: the query id is not an integer"
            malformed[f"row-{row}"] = MalformedQuery(problem, is_test, (1, row, 0))
            continue
        if len(rows_of[query_id]) > 1:
            if rows_of[query_id][0] == row:
                rows = " and ".join(map(str, rows_of[query_id]))
                problem = f"{path} rows {rows} share the query id {query_id}: query ids must be unique"
                malformed[str(query_id)] = MalformedQuery(problem, is_test, (0, query_id, row))
            continue
        try:
            good[query_id] = validate_entry(_Query, cells, where)
        except DatasetError as e:
            malformed[str(query_id)] = MalformedQuery(str(e), is_test, (0, query_id, row))
    rows_df = pd.DataFrame(
        [q.model_dump() for q in good.values()], index=pd.Index(list(good), dtype="int64"), columns=list(QUERY_COLUMNS)
    )
    return QueryList(rows_df.astype({"source_id": "int64", "target_id": "int64", "is_test": bool}), malformed)


def _readable_is_test(cell: str) -> bool | None:
    try:
        return _IS_TEST.validate_python(cell)
    except ValidationError:
        return None


@lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1,000 ILSVRC2012 wnids in the standard sorted order (class index -> wnid).

    Read from the copy timm ships (`timm/data/_info/imagenet_synsets.txt`), located without
    importing timm, which takes seconds and is not needed for a text file.
    """
    spec = importlib.util.find_spec("timm")
    path = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DatasetError(
            "the ImageNet class list ships with timm (timm/data/_info/imagenet_synsets.txt): install timm"
        )
    wnids = path.read_text().split()
    if len(wnids) != 1000:
        raise DatasetError(f"{path} has {len(wnids)} wnids, expected the 1,000 ILSVRC2012 classes")
    return wnids


def cache_dir(override: str | None = None) -> Path:
    """`override`, else $EDITSWEEP_CACHE/imagenet_flexit, else ~/.cache/editsweep/imagenet_flexit."""
    if override is not None:
        return Path(override).expanduser()
    base = os.environ.get("EDITSWEEP_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "editsweep") / "imagenet_flexit"


def download_queries(dest: Path, url: str = QUERIES_URL) -> Path:
    """`dest/queries.csv`, downloaded from `url` unless a copy with the pinned sha256 is there.

    Written under a temporary name and renamed only once its sha256 matches, so concurrent workers
    never see a partial or wrong file.
    """
    path = dest / "queries.csv"
    if path.is_file() and _sha256(path.read_bytes()) == QUERIES_SHA256:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(
            f"cannot download the imagenet query list {url}: {e}. Offline, copy FlexIT's dataset/queries.csv "
            f"(commit {COMMIT}) to {path} or pass `queries: <path>`"
        ) from e
    actual = _sha256(data)
    if actual != QUERIES_SHA256:
        raise DatasetError(f"checksum mismatch for {url}: expected sha256 {QUERIES_SHA256}, got {actual}")
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".queries.", suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    Path(tmp).chmod(0o644)
    os.replace(tmp, path)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
