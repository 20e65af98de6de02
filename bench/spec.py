"""The sweep spec: YAML validated by pydantic before anything starts.

A spec names a backbone, datasets, methods with parameter grids, seeds, metrics and execution
settings. In a method's `invert:` / `edit:` mapping a scalar is a fixed value and a list is a grid
axis; the sweep is the cartesian product of all axes. For a parameter that itself takes a list
(e.g. blended words), a flat list is one value and a list of lists is an axis. Every error names the key path
(`methods[1].edit.guidance`) and what is allowed, so a typo never costs a cluster job.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import json
import math
import re
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from editsweep.bench.metrics.base import SCORERS, get_scorer_class
from editsweep.core.lpips_models import PYPI
from editsweep.core.params import numeric_type
from editsweep.datasets.base import DATASETS, get_dataset_class
from editsweep.diffusion.memory import MemoryOptions, memory_refusal
from editsweep.methods.base import METHODS, get_method_class


class SpecError(ValueError):
    """The spec is invalid; the message lists every problem with its key path."""


# The store's `seed` column is int64 (bench/store.py SCHEMA): a seed outside it would run every
# edit, then fail the row write, on every rerun.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneSpec(_Strict):
    """Which diffusion model to load and how: a preset (`tiny`, `sd-v1-arch`), Hub id or folder.

    The memory options (diffusion/memory.py) change where and in how many pieces the model
    computes, not what: they are not part of task keys, so a sweep resumed with other options
    skips what is done, and the manifest records them with the spec.
    """

    name: str = "tiny"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    offload_text_encoders: bool = Field(
        False, description="keep the text encoders on the CPU (in dtype); only the embeddings move to the device"
    )
    attention_slicing: str | int | None = Field(
        None,
        description="diffusers' UNet attention slicing: auto (half the heads per slice), max (one), "
        "or heads per slice; not for SD3/FLUX",
    )
    vae_slicing: bool = Field(False, description="encode and decode one image of a batch at a time")

    @field_validator("attention_slicing", mode="before")
    @classmethod
    def _slice_size(cls, value: Any) -> Any:
        if value is None or value in ("auto", "max") or (type(value) is int and value >= 1):
            return value
        raise ValueError("attention_slicing is 'auto', 'max', a number of heads per slice (>= 1), or null (off)")

    def memory(self) -> MemoryOptions:
        """The memory options, for diffusion/memory.py `apply_memory_options`."""
        return MemoryOptions(self.offload_text_encoders, self.attention_slicing, self.vae_slicing)


class DatasetSpec(_Strict):
    """A registered dataset and its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    def params_json(self) -> str:
        """The params with the dataset's defaults filled in, as canonical JSON.

        With the name, this is the dataset instance: part of every task's identity (bench/plan.py),
        stored in the `dataset_params` column, and the key of a worker's dataset cache.
        """
        return canonical_json(get_dataset_class(self.name).Params.model_validate(self.params).model_dump(mode="json"))


class SearchSpec(_Strict):
    """An adaptive search on one numeric parameter of a method entry (bench/adaptive.py), of one of two kinds.

    A target search (`target`, `tolerance`) finds the value of `param` (`invert.<name>` or
    `edit.<name>`) in [low, high] whose mean `metric` over the entry's rows is within `tolerance` of
    `target` (round 0 runs low and high, each later round one more value). A spread search
    (`points`, `along`) finds `points` values whose (mean `metric`, mean `along`) points lie evenly
    along the trade-off curve, by arc length with both metrics scaled to their range: round 0 runs
    `points` values evenly spaced in [low, high], each later round one value per position not
    yet within `tolerance` (a fraction of the even spacing, default 0.25) of its goal. Either stops
    after `max_rounds` rounds; values are rounded to `decimals`.
    """

    param: str = Field(pattern=r"^(invert|edit)\.[A-Za-z_][A-Za-z0-9_]*$", description="invert.<name> or edit.<name>")
    metric: str = Field(min_length=1, description="a per-image score the spec's metrics produce")
    target: float | None = Field(None, allow_inf_nan=False, description="target search: the mean metric to reach")
    points: int | None = Field(None, ge=3, le=50, description="spread search: values to place along the curve")
    along: str | None = Field(None, min_length=1, description="spread search: the curve's second metric")
    tolerance: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="target: distance in metric units (required); spread: fraction of the spacing (< 0.5, default 0.25)",
    )  # fmt: skip
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    max_rounds: int = Field(5, ge=1, le=50, description="rounds including round 0")
    method: Literal["interpolate", "bisect"] = Field(
        "interpolate", description="target search's next value: linear interpolation in the bracket (regula falsi) or its midpoint"
    )
    decimals: int = Field(3, ge=0, le=8, description="values are rounded to this, so task keys are stable")

    @model_validator(mode="before")
    @classmethod
    def _spread_tolerance(cls, data: Any) -> Any:
        """A spread search's tolerance defaults to a quarter of the spacing."""
        if isinstance(data, dict) and data.get("points") is not None and data.get("tolerance") is None:
            return {**data, "tolerance": 0.25}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> SearchSpec:
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low} high={self.high}")
        if (self.target is None) == (self.points is None):
            raise ValueError("give either target (a target search) or points (a spread search along the curve)")
        if self.target is not None:
            if self.tolerance is None:
                raise ValueError("a target search needs tolerance (distance from target, in the metric's units)")
            if self.along is not None:
                raise ValueError("along belongs to a spread search (points); a target search has one metric")
        else:
            if self.along is None:
                raise ValueError("a spread search needs along: the trade-off curve's second metric")
            if self.along == self.metric:
                raise ValueError(f"along must differ from metric (both {self.metric!r})")
            if self.tolerance >= 0.5:
                raise ValueError(f"a spread search's tolerance is a fraction of the spacing below 0.5, got {self.tolerance}")
        return self

    @property
    def spread(self) -> bool:
        """Whether this is a spread search (`points` along the curve) rather than a target search."""
        return self.points is not None

    @property
    def kind(self) -> str:
        """`invert` or `edit`: which parameter model the searched parameter belongs to."""
        return self.param.split(".", 1)[0]

    @property
    def key(self) -> str:
        """The searched parameter's name inside its model."""
        return self.param.split(".", 1)[1]


class MethodSpec(_Strict):
    """A registered method with its inversion and edit parameter grids, and optionally a search."""

    name: str
    invert: dict[str, Any] = Field(default_factory=dict)
    edit: dict[str, Any] = Field(default_factory=dict)
    search: SearchSpec | None = None

    def invert_grid(self) -> list[dict[str, Any]]:
        """Every point of the inversion grid, with the method's defaults filled in."""
        model = get_method_class(self.name).InvertParams
        return [_full(model, p) for p in _product(self.invert, model)]

    def edit_grid(self) -> list[dict[str, Any]]:
        """Every point of the edit grid, with the method's defaults filled in."""
        model = get_method_class(self.name).EditParams
        return [_full(model, p) for p in _product(self.edit, model)]


class ExecutionSpec(_Strict):
    """How the sweep runs on the Ray cluster."""

    workers: int | Literal["auto"] = Field(
        "auto", description="actors (at least 1); auto = GPUs / gpus_per_worker, else 1"
    )
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, le=8, description="below 1 packs several small backbones per GPU")
    max_in_flight: int = Field(2, ge=1, le=16, description="units queued at each actor, so none waits on the driver")
    batch_size: int = Field(4, ge=1, description="samples inverted together in one call")
    edit_batch_size: int = Field(16, ge=1, description="images denoised together in one edit call")
    max_retries: int = Field(2, ge=0, description="re-runs of a unit whose worker died")
    max_restarts: int = Field(4, ge=0, description="restarts of a dead worker actor")
    flush_seconds: float = Field(
        1.0, ge=0, le=600, description="the driver writes buffered rows at least this often (0: each unit at once)"
    )
    flush_rows: int = Field(512, ge=1, description="... or as soon as this many rows are buffered")
    unit_timeout_s: float = Field(
        7200.0, gt=0, description="a unit running longer has its actor killed and replaced, as a dead worker"
    )
    start_timeout_s: float = Field(
        600.0,
        gt=0,
        description="an actor Ray cannot place on a node this long is dropped (loading models has no "
        "deadline); the run fails if none is placed",
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _positive_workers(cls, value: Any) -> Any:
        # One message instead of pydantic's two (one per branch of the union).
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError("workers is a number of actors (at least 1) or 'auto'")
        return value


class MlflowSpec(_Strict):
    """Where the report logs; defaults to a sqlite file in the run directory."""

    tracking_uri: str | None = None
    experiment: str | None = None


class MatchedSpec(_Strict):
    """The report's matched-fidelity comparison (`reports/matched.py`): metrics read at fixed levels."""

    fidelity: str | None = Field(None, min_length=1, description="fidelity metric of the levels; default lpips")
    metrics: list[str] | None = Field(
        None, min_length=1, description="editability metrics read at the levels; default clip_t (and csfid if any)"
    )
    levels: list[float] | None = Field(
        None, min_length=1, description="fidelity levels; default: quartiles of the range all methods cover"
    )
    n_boot: int = Field(1000, ge=100, le=100_000, description="paired bootstrap resamples")
    ci: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")

    @field_validator("levels")
    @classmethod
    def _finite_distinct(cls, levels: list[float] | None) -> list[float] | None:
        if levels is None:
            return None
        if not all(math.isfinite(v) for v in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct finite numbers, got {levels}")
        return sorted(levels)

    @field_validator("metrics")
    @classmethod
    def _distinct_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        if metrics is not None and (len(set(metrics)) != len(metrics) or not all(metrics)):
            raise ValueError(f"metrics must be distinct non-empty names, got {metrics}")
        return metrics

    @model_validator(mode="after")
    def _fidelity_not_compared(self) -> MatchedSpec:
        if self.metrics and (self.fidelity or "lpips") in self.metrics:
            raise ValueError(f"the fidelity metric {self.fidelity or 'lpips'!r} cannot also be an editability metric")
        return self


class ReportSpec(_Strict):
    """Options of the report stage."""

    matched: MatchedSpec = Field(default_factory=MatchedSpec)


class SweepSpec(_Strict):
    """A whole sweep: methods x datasets x seeds x parameter grids."""

    name: str = Field(description="letters, digits, _ . - (not only dots): the default run dir is runs/<name>")
    imports: list[str] = Field(default_factory=list, description="modules or .py files registering plugins")
    backbone: BackboneSpec | list[BackboneSpec] = Field(
        default_factory=BackboneSpec, description="one backbone, or a list to sweep over backbones"
    )
    datasets: list[DatasetSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, description="distinct int64 values")
    metrics: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"clip_t": {}, "lpips": {}, "psnr": {}, "ssim": {}},
        description="per-image scorers and their parameters; default: the four standard ones, pretrained",
    )
    allow_random_weights: bool = Field(False, description="let scorers use random weights when asked")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        # The default run directory is runs/<name>: `..` would put it at the checkout root.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not name.strip("."):
            raise ValueError(
                f"{name!r} is not a folder name: use letters, digits, '_', '.' and '-' (not only dots), "
                "since the default run directory is runs/<name>"
            )
        return name

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @field_validator("backbone")
    @classmethod
    def _distinct_backbones(cls, value: BackboneSpec | list[BackboneSpec]) -> BackboneSpec | list[BackboneSpec]:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one backbone")
            if len({(b.name, b.dtype) for b in value}) != len(value):
                raise ValueError("backbones must be distinct (name, dtype) pairs")
            if len({b.device for b in value}) != 1:
                raise ValueError("every backbone of a sweep must name the same device")
        return value

    @property
    def searches(self) -> dict[int, SearchSpec]:
        """Method entry index -> its target search, for the entries that have one."""
        return {i: m.search for i, m in enumerate(self.methods) if m.search is not None}

    @property
    def backbones(self) -> list[BackboneSpec]:
        """The backbones to sweep over (one or more)."""
        return self.backbone if isinstance(self.backbone, list) else [self.backbone]

    @property
    def device(self) -> str:
        """Where workers run the backbones: auto, cpu or cuda."""
        return self.backbones[0].device


def plugin_module_name(path: str | Path) -> str:
    """The module name a plugin file is imported under: unique per absolute path.

    Derived from the path, not only the file name, so that two plugins called `methods.py` in
    different folders both load; the same file always gets the same name, so importing it again
    (a second spec, a worker) is a no-op.
    """
    resolved = Path(path).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return f"editsweep_plugin_{resolved.stem}_{digest}"


def import_plugins(imports: list[str]) -> list[ModuleType]:
    """Import user modules (dotted names or .py paths) so their methods/datasets/metrics register.

    A plugin that fails to import (any exception, e.g. a syntax error or a name that clashes with a
    registered one: core/registry.py) is a SpecError naming the file or module and the error.
    """
    modules = []
    for entry in imports:
        if entry.endswith(".py"):
            path = Path(entry)
            if not path.is_file():
                raise SpecError(f"imports: no such file {path}")
            module_name = plugin_module_name(path)
            if module_name in sys.modules:
                modules.append(sys.modules[module_name])
                continue
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:  # noqa: BLE001 - any failure of user code becomes one clear message
                del sys.modules[module_name]  # a fixed file imports afresh next time
                raise SpecError(f"imports: plugin file {path} failed to import: {_describe_error(err)}") from None
            modules.append(module)
        else:
            try:
                modules.append(importlib.import_module(entry))
            except Exception as err:  # noqa: BLE001 - as above
                raise SpecError(f"imports: cannot import {entry!r}: {_describe_error(err)}") from None
    return modules


def _describe_error(err: BaseException) -> str:
    """`Type: message`, and for a syntax error the line it is on."""
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} (line {err.lineno})"
    return f"{type(err).__name__}: {err}"


def _absolute_plugin(entry: Any, base_dir: Path | None) -> Any:
    if not isinstance(entry, str) or not entry.endswith(".py") or Path(entry).is_absolute():
        return entry
    return str(((base_dir or Path.cwd()) / entry).resolve())


def _absolute_method_paths(entry: Any, base_dir: Path | None) -> Any:
    """A method entry whose local-path parameters (fields marked `local_path`) are absolute.

    Relative paths are relative to the spec file's folder (the current folder for a mapping), as
    for `imports:`, so that workers in other processes or on other nodes read the same place.
    """
    if not isinstance(entry, dict) or entry.get("name") not in METHODS:
        return entry  # validation reports what is wrong with it
    cls = get_method_class(entry["name"])
    fixed = dict(entry)
    for kind, model in (("invert", cls.InvertParams), ("edit", cls.EditParams)):
        grid = entry.get(kind)
        if not isinstance(grid, dict):
            continue
        fixed[kind] = {k: _absolute_path(v, base_dir) if _is_local_path(model, k) else v for k, v in grid.items()}
    return fixed


def _is_local_path(model: type[BaseModel], key: str) -> bool:
    """Whether parameter `key` of `model` is declared with `json_schema_extra={"local_path": True}`."""
    field = model.model_fields.get(key)
    extra = field.json_schema_extra if field is not None else None
    return isinstance(extra, dict) and bool(extra.get("local_path"))


def _absolute_path(value: Any, base_dir: Path | None) -> Any:
    """`value` made absolute when it is a path string; a list (a grid axis) element by element."""
    if isinstance(value, list):
        return [_absolute_path(v, base_dir) for v in value]
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else ((base_dir or Path.cwd()) / path).resolve())


def load_spec(source: str | Path | dict[str, Any]) -> SweepSpec:
    """Parse and fully validate a spec from a YAML file path or a mapping."""
    base_dir = None
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        try:
            raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
        except _DuplicateKeyError as err:
            raise SpecError(f"{path}: {err}") from None
        except yaml.YAMLError as err:
            raise SpecError(f"{path} is not valid YAML: {err}") from err
        base_dir = path.parent
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: a spec is a YAML mapping with keys name, datasets, methods, ...")
    load_registries()
    if isinstance(raw.get("imports"), list):
        # Absolute .py paths, so that workers (other processes, other cwd) import the same files.
        raw = {**raw, "imports": [_absolute_plugin(entry, base_dir) for entry in raw["imports"]]}
        import_plugins(raw["imports"])
    if isinstance(raw.get("methods"), list):
        raw = {**raw, "methods": [_absolute_method_paths(entry, base_dir) for entry in raw["methods"]]}
    raw = _absolute_backbone_paths(raw, base_dir)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(err, "")) from None
    problems = _check_backbones(spec) + _check_registered(spec)
    if problems:
        raise SpecError("invalid sweep spec:\n" + "\n".join(f"  - {p}" for p in problems))
    return spec


def load_matched_options(spec: dict[str, Any]) -> MatchedSpec:
    """The `report.matched` section of a stored spec (a manifest's mapping), validated.

    Raises SpecError naming the key path, as `load_spec` does; a spec without it gives the defaults.
    """
    try:
        return MatchedSpec.model_validate((spec.get("report") or {}).get("matched") or {})
    except ValidationError as err:
        raise SpecError(_format_errors(err, "report.matched")) from None


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping of the spec names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    PyYAML (like the YAML 1.1 spec it follows loosely) silently keeps the last value; a spec with
    `seeds:` twice would run a different sweep than the one the reader sees.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by design
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKeyError(f"key {key!r} given twice: line {seen[key]} and line {line}")
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def _absolute_backbone_paths(raw: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """Backbone names that are local folders made absolute, relative to the spec file's folder.

    As for `imports:`: workers in other processes or on other nodes then read the same folder.
    Hub ids and presets are left as they are (diffusion/backbone.py: `backbone_source`).
    """
    from editsweep.diffusion.backbone import backbone_source

    def fix(entry: Any) -> Any:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return entry
        name = entry["name"]
        if backbone_source(name, base_dir) != "folder":
            return entry
        return {**entry, "name": _absolute_path(name, base_dir)}

    backbone = raw.get("backbone")
    if isinstance(backbone, list):
        return {**raw, "backbone": [fix(b) for b in backbone]}
    if backbone is not None:
        return {**raw, "backbone": fix(backbone)}
    return raw


def _check_backbones(spec: SweepSpec) -> list[str]:
    """A backbone that names a local folder must be one, and a diffusers one; its memory options
    must apply to its family (where the family is known by name).

    Hub ids are not checked here: the workers' cache or network decides (diffusion/backbone.py
    fails there with a message saying how to provide the weights), and `--dry-run` must work on a
    machine that has no weights.
    """
    from editsweep.diffusion.backbone import backbone_source, diffusers_folder_problem, family_of

    problems = []
    for i, b in enumerate(spec.backbones):
        where = f"backbone[{i}].name" if isinstance(spec.backbone, list) else "backbone.name"
        if (refused := memory_refusal(family_of(b.name), b.memory())) is not None:
            problems.append(f"{where.removesuffix('.name')}.{refused}")
        if backbone_source(b.name) != "folder":
            continue
        folder = Path(b.name).expanduser()
        if not folder.is_dir():
            problems.append(
                f"{where}: no such folder {b.name!r}: give a local diffusers folder, a Hub id (org/name), "
                "or a preset (tiny, sd-v1-arch)"
            )
        elif problem := diffusers_folder_problem(folder):
            problems.append(f"{where}: {problem}")
    return problems


def load_registries() -> None:
    """Import the built-in methods, datasets and metrics so that their names are registered."""
    import editsweep.bench.metrics  # noqa: F401
    import editsweep.datasets  # noqa: F401
    import editsweep.methods  # noqa: F401


def _check_registered(spec: SweepSpec) -> list[str]:
    """Names must be registered and every grid point must satisfy its pydantic model."""
    from editsweep.diffusion.backbone import family_of

    problems: list[str] = []
    for i, d in enumerate(spec.datasets):
        if d.name not in DATASETS:
            problems.append(f"datasets[{i}].name: unknown dataset {d.name!r}; known: {', '.join(sorted(DATASETS))}")
            continue
        problems += _validate(get_dataset_class(d.name).Params, d.params, f"datasets[{i}].params")
    for i, m in enumerate(spec.methods):
        if m.name not in METHODS:
            problems.append(f"methods[{i}].name: unknown method {m.name!r}; known: {', '.join(sorted(METHODS))}")
            continue
        cls = get_method_class(m.name)
        for kind, grid, model in (("invert", m.invert, cls.InvertParams), ("edit", m.edit, cls.EditParams)):
            for key, values in grid.items():
                if isinstance(values, list) and not values:
                    problems.append(f"methods[{i}].{kind}.{key}: an empty list makes an empty grid")
            for point in _product(grid, model):
                problems += _validate(model, point, f"methods[{i}].{kind}")
        if not any(p.startswith(f"methods[{i}].") for p in problems):
            problems += _refused_pairs(cls, m, f"methods[{i}]")
        problems += [f"methods[{i}]: {r}" for b in spec.backbones if (r := cls.refuse_backbone(b.name))]
        for b in spec.backbones:
            family = family_of(b.name)
            if refused := cls.refuse_family(family):
                problems.append(f"methods[{i}]: backbone {b.name!r}: {refused}")
            elif family is not None and not any(p.startswith(f"methods[{i}].") for p in problems):
                problems += [f"methods[{i}]: backbone {b.name!r}: {r}" for r in _refused_on(cls, m, family)]
        if m.search is not None and not any(p.startswith(f"methods[{i}].") for p in problems):
            problems += _check_search(spec, m, cls, f"methods[{i}]")
    for name, params in spec.metrics.items():
        if name not in SCORERS:
            problems.append(f"metrics.{name}: unknown metric; known: {', '.join(sorted(SCORERS))}")
            continue
        problems += _validate(get_scorer_class(name).Params, params or {}, f"metrics.{name}")
        if (params or {}).get("weights") == PYPI and (params or {}).get("net") == "squeeze":
            problems.append(
                f"metrics.{name}.weights: 'pypi' has AlexNet and VGG16 only (core/lpips_pypi.py); SqueezeNet "
                "needs torchvision's file: weights: pretrained (torch hub cache) or a path to it"
            )
        if (params or {}).get("weights") == "random" and not spec.allow_random_weights:
            problems.append(
                f"metrics.{name}.weights: 'random' gives scores that are not comparable to published "
                "numbers; set allow_random_weights: true to use them anyway"
            )
    return sorted(set(problems), key=problems.index)


def _check_search(spec: SweepSpec, entry: MethodSpec, cls: type, where: str) -> list[str]:
    """A search's parameter is a numeric parameter of the entry's method, not a grid axis, and the
    entry has no grid axes (its points pool one value's rows); low and high are valid values of it;
    its metric (and `along`) are scores the spec's metrics produce."""
    search = entry.search
    model = cls.InvertParams if search.kind == "invert" else cls.EditParams
    grid = entry.invert if search.kind == "invert" else entry.edit
    field = model.model_fields.get(search.key)
    if numeric_type(field) is None:
        numeric = [k for k, f in model.model_fields.items() if numeric_type(f) is not None]
        return [
            f"{where}.search.param: {search.param!r} is not a numeric {search.kind} parameter of {entry.name}; "
            f"numeric ones: {', '.join(numeric) or '(none)'}"
        ]
    problems = []
    if search.key in grid:
        problems.append(f"{where}.search.param: {search.param} is also given in {where}.{search.kind}; drop it there")
    if len(entry.invert_grid()) * len(entry.edit_grid()) > 1:
        problems.append(f"{where}.search: an entry with a search has no grid axes (lists); give fixed values")
    if numeric_type(field) is int and (search.low != int(search.low) or search.high != int(search.high)):
        problems.append(f"{where}.search: {search.param} is an integer; low and high must be integers")
    for bound in ("low", "high"):
        point = {**{k: v for k, v in grid.items() if k != search.key}, search.key: getattr(search, bound)}
        try:
            model.model_validate(point)
        except ValidationError as err:
            problems += [f"{where}.search.{bound}: {e['msg']} (got {getattr(search, bound)})" for e in err.errors()]
    produced = {
        score for name in spec.metrics if name in SCORERS for score in get_scorer_class(name).metric_infos()
    }
    for key in ("metric", "along"):
        name = getattr(search, key)
        if name is not None and name not in produced:
            problems.append(
                f"{where}.search.{key}: {name!r} is not a per-image score of this spec's metrics; "
                f"they produce: {', '.join(sorted(produced)) or '(none)'}"
            )
    return problems


def _refused_pairs(cls: type, entry: MethodSpec, where: str) -> list[str]:
    """The method's reasons against (invert point, edit point) combinations of the entry's grids."""
    invert = [cls.InvertParams.model_validate(p) for p in _product(entry.invert, cls.InvertParams)]
    edit = [cls.EditParams.model_validate(p) for p in _product(entry.edit, cls.EditParams)]
    reasons = [cls.refuse(ip, ep) for ip in invert for ep in edit]
    return [f"{where}: {r}" for r in dict.fromkeys(r for r in reasons if r)]


def _refused_on(cls: type, entry: MethodSpec, family: str) -> list[str]:
    """The method's reasons against (invert point, edit point) combinations of the entry's grids on a
    backbone of `family` (an inversion x editor pair whose member does not run on it)."""
    invert = [cls.InvertParams.model_validate(p) for p in _product(entry.invert, cls.InvertParams)]
    edit = [cls.EditParams.model_validate(p) for p in _product(entry.edit, cls.EditParams)]
    return list(dict.fromkeys(r for ip in invert for ep in edit if (r := cls.refuse_family(family, ip, ep))))


def _validate(model: type[BaseModel], values: dict[str, Any], where: str) -> list[str]:
    try:
        valid = model.model_validate(values)
    except ValidationError as err:
        if model.model_config.get("extra") == "allow":  # a choice of component: its error names its parameters
            return _format_errors(err, where).splitlines()
        allowed = ", ".join(model.model_fields) or "(none)"
        return [f"{line} (parameters of this model: {allowed})" for line in _format_errors(err, where).splitlines()]
    return _non_finite(valid.model_dump(), where)


def _non_finite(value: Any, where: str) -> list[str]:
    """NaN and infinities, which canonical JSON (the stored params and the task keys) cannot hold.

    pydantic would dump them as null, so that `nan` and `inf` would name the same task.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}: {value} is not a finite number; parameters are stored as JSON"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{where}[{i}]")]
    return []


def _format_errors(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        path = prefix
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        value = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""
        lines.append(f"{path or '<spec>'}: {e['msg']}{value}")
    return "\n".join(lines)


def _product(grid: dict[str, Any], model: type[BaseModel]) -> list[dict[str, Any]]:
    """Cartesian product of a grid mapping: lists are axes, scalars are fixed values."""
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(_axis(model, k, grid[k]) for k in keys))]


def _axis(model: type[BaseModel], key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    field = model.model_fields.get(key)
    takes_list = field is not None and typing.get_origin(field.annotation) in (list, tuple)
    if takes_list and not any(isinstance(v, list) for v in value):
        return [value]
    return value


def _full(model: type[BaseModel], point: dict[str, Any]) -> dict[str, Any]:
    """A grid point with defaults filled in, in canonical JSON-able form."""
    return model.model_validate(point).model_dump(mode="json")


__all__ = ["SpecError", "SweepSpec", "import_plugins", "load_registries", "load_spec"]
