"""The sweep worker: owns one device, a loaded backbone and the scorers, and processes units.

`SweepWorker` is a plain class, so tests can drive it in-process; the runner wraps it as a Ray
actor. A unit is inverted as one batch and edited in chunks of edit points (halved on GPU out of
memory); it writes the images to the store and returns the result rows, which the driver writes
in one Parquet batch per unit as soon as they arrive (one writer of the results table; a worker
that dies before returning loses only its own unit, which is retried).

Each `edit` call's output is checked against the contract of `Method.edit` (methods/base.py) by
`check_edit_output`. A violation (wrong count, shape or dtype, pixels outside [0, 1]) fails the
tasks of that call directly, without isolation: it is the method's bug, the same on a retry, and
images of a wrongly shaped output cannot be attributed to samples. NaN or infinite pixels fail
only the images that have them.

Failures are contained, cheapest first and only after a failure (the hot path stays one call per
chunk of edit points for the whole batch): a batch whose inversion raises is retried group by
group; an edit chunk that raises is retried for each sample alone (edited from its own inversion),
then for each point alone; scoring and storing that raise are retried on each sample's images,
then on each image, without editing again. Only the (sample, point) cells that still fail become
error rows, rows of chunks already made are kept, and an image is written only with its ok row.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from editsweep.bench.metrics.base import ScoreBatch, get_scorer_class
from editsweep.bench.plan import Group, Task, Unit
from editsweep.bench.rundir import check_marker as check_run_marker
from editsweep.bench.spec import SweepSpec, load_spec
from editsweep.bench.store import RunStore
from editsweep.core.params import Params
from editsweep.datasets.base import Sample, get_dataset_class, sample_labels
from editsweep.datasets.images import fit_square
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.inputs import images_tensor, to_pil
from editsweep.diffusion.memory import MemoryOptions, apply_memory_options
from editsweep.methods.base import Method, State, get_method_class

if TYPE_CHECKING:
    from editsweep.diffusion.backbone import Backbone
    from editsweep.diffusion.flow import FlowBackbone

PIXEL_TOLERANCE = 1e-3
"""How far outside [0, 1] an edit's pixels may be (rounding of a decoder) before it is a contract
violation; values within it are clamped before scoring and storing."""


class OutputContractError(ValueError):
    """A method's `edit` returned something other than one (B, 3, H, W) tensor in [0, 1] per point."""


def check_edit_output(
    method: str, edited: Any, n_points: int, batch: int, size: tuple[int, int], tolerance: float = PIXEL_TOLERANCE
) -> torch.Tensor:
    """Check `edit`'s output against its contract (methods/base.py) and return it as one float
    (n_points * batch, 3, H, W) tensor, point-major, clamped to [0, 1] (NaN and inf are kept: they
    fail only their own images). Raises OutputContractError saying what came back and what is expected."""
    h, w = size
    expected = f"expected one ({batch}, 3, {h}, {w}) tensor per edit point"
    if not isinstance(edited, (list, tuple)):
        raise OutputContractError(f"{method}.edit returned a {type(edited).__name__}; {expected}")
    if len(edited) != n_points:
        raise OutputContractError(
            f"{method}.edit returned {len(edited)} tensors for {n_points} edit point{'s' * (n_points != 1)}; {expected}"
        )
    for i, images in enumerate(edited):
        if not isinstance(images, torch.Tensor):
            raise OutputContractError(f"{method}.edit returned a {type(images).__name__} as item {i}; {expected}")
        if tuple(images.shape) != (batch, 3, h, w):
            raise OutputContractError(
                f"{method}.edit returned tensor {i} of shape {tuple(images.shape)}; expected ({batch}, 3, {h}, {w}) "
                f"({batch} sample{'s' * (batch != 1)}, RGB, at the input size {h}x{w})"
            )
        if not images.is_floating_point():
            raise OutputContractError(f"{method}.edit returned tensor {i} of dtype {images.dtype}; expected floats in [0, 1]")
    out = torch.cat([images.float() for images in edited])
    finite = torch.isfinite(out)
    if bool(finite.any()):
        lo = float(torch.where(finite, out, torch.inf).min())
        hi = float(torch.where(finite, out, -torch.inf).max())
        if lo < -tolerance or hi > 1 + tolerance:
            hint = "not [0, 255]" if hi > 2 else "not [-1, 1]: map x to (x + 1) / 2" if lo < -0.5 else "clamp them"
            raise OutputContractError(
                f"{method}.edit returned pixel values in [{lo:.4g}, {hi:.4g}]; expected [0, 1]: "
                f"return images in [0, 1], {hint}"
            )
    return out.clamp(0, 1)


@dataclass
class UnitReport:
    """What a worker sends back for a unit: counts and where the time went (seconds)."""

    n_ok: int = 0
    n_error: int = 0
    invert_calls: int = 0
    edit_calls: int = 0
    oom_retries: int = 0  # edit batches halved after running out of GPU memory
    backbone_loads: int = 0  # backbones loaded to serve this unit (0 when the actor held it)
    seconds: Counter = field(default_factory=Counter)  # load, invert, edit, score, store
    rows: list[dict[str, Any]] = field(default_factory=list)  # the unit's result rows, for the driver
    started_at: float = 0.0  # wall clock (time.time) when the actor began the unit
    finished_at: float = 0.0  # and when it finished: the gaps between units are dispatch overhead


@dataclass
class _Batch:
    """An inverted batch of groups and what editing it needs."""

    loaded: list[tuple[Group, Sample]]
    method: Method
    invert_params: Params
    edit_points: list[str]  # the groups' edit parameters (canonical JSON), shared by every group
    state: State
    sources: torch.Tensor  # (B, 3, H, W) inputs in [0, 1], on the device
    inputs: list[str]  # each sample's stored input, relative to the run directory
    invert_s: float
    singles: dict[int, State | str] = field(default_factory=dict)  # a sample's own state, or why it failed


_Cell = tuple[int, int, torch.Tensor]  # (sample position in the batch, edit point index, its image)


def _cells(idx: list[int], points: list[int], images: torch.Tensor) -> list[_Cell]:
    """Pair point-major images with their (sample, point)."""
    return [(b, k, images[j * len(idx) + i]) for j, k in enumerate(points) for i, b in enumerate(idx)]


def task_row(task: Task, **fields: Any) -> dict[str, Any]:
    """A result row for `task` with the plan's identity columns filled in."""
    row = dict(
        task_key=task.task_key,
        group_key=task.group_key,
        method=task.method,
        dataset=task.dataset,
        dataset_params=task.dataset_params,
        backbone=task.backbone,
        dtype=task.dtype,
        sample_id=task.sample_id,
        seed=task.seed,
        invert_params=task.invert_params,
        edit_params=task.edit_params,
        created_at=datetime.now(timezone.utc),
    )
    row.update(fields)
    return row


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-(seed, sample) RNG seed, so results do not depend on batch composition."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "little") >> 1


class SweepWorker:
    """Processes units of a sweep on one device with models loaded once."""

    def __init__(
        self,
        spec: SweepSpec | dict[str, Any],
        run_dir: str,
        run_id: str,
        backbone_index: int = 0,
        check_marker: bool | None = None,
    ) -> None:
        started = time.perf_counter()
        self.spec = spec if isinstance(spec, SweepSpec) else load_spec(spec)
        self.run_id = run_id
        self.store = RunStore(run_dir)
        check_run_marker(self.store, run_id, check_marker)  # this node sees the driver's run directory
        use_cuda = self.spec.device == "cuda" or (self.spec.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        first = self.spec.backbones[backbone_index % len(self.spec.backbones)]
        self.backbone_key = self._backbone_key((first.name, first.dtype))
        self.backbone = self._load_backbone(self.backbone_key)
        self.scorers = [get_scorer_class(n)(p or {}, self.device) for n, p in self.spec.metrics.items()]
        # Keyed by instance (name, params): two entries of one dataset each load their own samples.
        self.datasets = {(d.name, d.params_json()): get_dataset_class(d.name)(d.params) for d in self.spec.datasets}
        self.methods: dict[str, Method] = {m.name: get_method_class(m.name)() for m in self.spec.methods}
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.device_name = torch.cuda.get_device_name(self.device) if use_cuda else "cpu"
        self.init_seconds = time.perf_counter() - started

    @property
    def random_weights(self) -> bool:
        """Whether the loaded backbone or any scorer uses random weights (recorded in every row)."""
        return self.backbone.random_weights or any(s.random_weights for s in self.scorers)

    @property
    def weights(self) -> str:
        """Where every model's weights come from (recorded in every row)."""
        parts = [f"backbone={self.backbone.weights_source}"] + [f"{s.name}={s.weights_source}" for s in self.scorers]
        return ";".join(parts)

    def _weights(self, task: Task) -> dict[str, Any]:
        """The row's `weights` and `random_weights`: backbone, scorers and the method's own models."""
        method = self.methods[task.method]
        extra = method.model_sources(method.InvertParams.model_validate(json.loads(task.invert_params)))
        return dict(
            weights=";".join([self.weights, *(f"{name}={source}" for name, source in extra.items())]),
            random_weights=self.random_weights or any(s.endswith(":random") for s in extra.values()),
        )

    def info(self) -> dict[str, Any]:
        """Who this worker is, which backbone it holds, and how long it took to load its models."""
        return dict(
            worker=self.name,
            device=self.device_name,
            backbone=self.backbone_key[0],
            memory=self.backbone_key[2].as_dict(),
            init_seconds=self.init_seconds,
        )

    def _backbone_key(self, backbone: tuple[str, str]) -> tuple[str, str, MemoryOptions]:
        """What a loaded backbone is: (name, dtype) as units name it, and the memory options its
        spec entry gives (diffusion/memory.py), which the spec fixes per (name, dtype)."""
        entry = next(b for b in self.spec.backbones if (b.name, b.dtype) == backbone)
        return (*backbone, entry.memory())

    def _load_backbone(self, key: tuple[str, str, MemoryOptions]) -> Backbone | FlowBackbone:
        """The backbone loaded on this worker's device and laid out as its memory options say."""
        backbone = load_backbone(key[0], self.device, key[1])
        apply_memory_options(backbone, key[2])
        return backbone

    def _use_backbone(self, backbone: tuple[str, str], report: UnitReport) -> None:
        """Load the unit's backbone if it is not the one held (the driver keeps this rare)."""
        key = self._backbone_key(backbone)
        if key == self.backbone_key:
            return
        t0 = time.perf_counter()
        self.backbone = None  # free the old weights before loading the new ones
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.backbone = self._load_backbone(key)
        self.backbone_key = key
        report.backbone_loads += 1
        report.seconds["load"] += time.perf_counter() - t0

    def process(self, unit: Unit) -> UnitReport:
        """Invert, edit and score every task of the unit and store its images; returns its rows.

        Never raises for a task's failure: failures are error rows.
        """
        report = UnitReport(started_at=time.time())
        self._use_backbone(unit.backbone, report)
        rows: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        loaded: list[tuple[Group, Sample]] = []
        for group in unit.groups:
            try:
                loaded.append((group, self._load_sample(group.head)))
            except Exception as err:  # noqa: BLE001 - any unreadable sample becomes error rows
                rows += self._error_rows(group.tasks, f"cannot load sample {group.head.sample_id!r}: {err}")
        report.seconds["load"] += time.perf_counter() - t0
        if loaded:
            rows += self._run_groups(loaded, report)
        report.rows = rows
        report.finished_at = time.time()
        report.n_ok += sum(r["status"] == "ok" for r in rows)
        report.n_error += sum(r["status"] == "error" for r in rows)
        return report

    def _load_sample(self, task: Task) -> Sample:
        sample = self.datasets[task.dataset, task.dataset_params].load(task.sample_id)
        if not sample.target_prompt:
            raise ValueError("the sample has no target prompt")
        sample.image = fit_square(sample.image, self.backbone.resolution)
        return sample

    def _generators(self, groups: Sequence[Group]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(sample_seed(g.head.seed, g.head.sample_id)) for g in groups]

    def _run_groups(self, loaded: list[tuple[Group, Sample]], report: UnitReport) -> list[dict[str, Any]]:
        """Invert the groups as one batch and edit them; a batch whose inversion raises is retried
        group by group (a group that still fails becomes error rows). Edits never raise out."""
        try:
            batch = self._invert(loaded, report)
        except Exception:  # noqa: BLE001 - isolate the failing group(s)
            if len(loaded) == 1:
                return self._error_rows(loaded[0][0].tasks, _describe(traceback.format_exc()))
            return [row for item in loaded for row in self._run_groups([item], report)]
        return self._edit_batch(batch, report)

    def _invert(self, loaded: list[tuple[Group, Sample]], report: UnitReport) -> _Batch:
        groups = [g for g, _ in loaded]
        samples = [s for _, s in loaded]
        head = groups[0].head
        method = self.methods[head.method]
        invert_params = method.InvertParams.model_validate(json.loads(head.invert_params))
        family = self.backbone.family  # checked here too for a Hub id whose family only loading told
        points = [method.EditParams.model_validate(json.loads(t.edit_params)) for t in groups[0].tasks]
        for point in points or [None]:
            if refused := method.refuse_family(family, invert_params, point):
                raise ValueError(refused)
        t0 = time.perf_counter()
        seeds = [g.head.seed for g in groups]
        state = method.invert(self.backbone, samples, invert_params, self._generators(groups), seeds=seeds)
        invert_s = self._elapsed(t0)
        report.seconds["invert"] += invert_s
        report.invert_calls += 1
        return _Batch(
            loaded=loaded,
            method=method,
            invert_params=invert_params,
            edit_points=[t.edit_params for t in groups[0].tasks],
            state=state,
            sources=images_tensor(samples, self.device),
            inputs=[self.store.write_input(g.head.dataset, s.id, s.image, g.head.dataset_params) for g, s in loaded],
            invert_s=invert_s,
        )

    def _edit_batch(self, batch: _Batch, report: UnitReport) -> list[dict[str, Any]]:
        """Edit the whole batch in chunks of edit points (the hot path: one call per chunk).

        A chunk that runs out of GPU memory is halved; any other failure of a chunk (its edit, its
        scoring or its storing) is isolated (`_isolate_edit`, `_finish`), so only the culprit
        sample's and point's rows are errors and the rows of chunks already made are kept.
        """
        everyone = list(range(len(batch.loaded)))
        n_points = len(batch.edit_points)
        method = batch.method
        chunk = n_points if method.edit_points_together else max(1, self.spec.execution.edit_batch_size // len(everyone))
        rows: list[dict[str, Any]] = []
        start = 0
        while start < n_points:
            points = list(range(start, min(start + chunk, n_points)))
            try:
                images, edit_s = self._edit(batch, everyone, points, report)
            except OutputContractError as err:
                rows += self._error_cells(batch, everyone, points, str(err))
            except torch.cuda.OutOfMemoryError:
                if len(points) == 1:
                    rows += self._isolate_edit(batch, everyone, points, report, _describe(traceback.format_exc()))
                else:
                    chunk = len(points) // 2  # halve the edit batch and try again before isolating
                    report.oom_retries += 1
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
            except Exception:  # noqa: BLE001 - one failing sample or point must not fail the others
                rows += self._isolate_edit(batch, everyone, points, report, _describe(traceback.format_exc()))
            else:
                rows += self._finish(batch, _cells(everyone, points, images), edit_s, report)
            start += len(points)
        return rows

    def _isolate_edit(
        self, batch: _Batch, idx: list[int], points: list[int], report: UnitReport, message: str
    ) -> list[dict[str, Any]]:
        """After the edit of samples `idx` at `points` failed: each sample alone, then each point
        alone; a single (sample, point) that still fails is an error row with `message`."""
        if len(idx) > 1:
            return [row for b in idx for row in self._contained_edit(batch, [b], points, report)]
        if len(points) > 1:
            return [row for k in points for row in self._contained_edit(batch, idx, [k], report)]
        return self._error_cells(batch, idx, points, message)

    def _contained_edit(
        self, batch: _Batch, idx: list[int], points: list[int], report: UnitReport
    ) -> list[dict[str, Any]]:
        """Edit, score and store samples `idx` at `points`; never raises (isolates instead)."""
        try:
            images, edit_s = self._edit(batch, idx, points, report)
        except OutputContractError as err:
            return self._error_cells(batch, idx, points, str(err))
        except Exception:  # noqa: BLE001 - isolate further
            return self._isolate_edit(batch, idx, points, report, _describe(traceback.format_exc()))
        return self._finish(batch, _cells(idx, points, images), edit_s, report)

    def _edit(
        self, batch: _Batch, idx: list[int], points: list[int], report: UnitReport
    ) -> tuple[torch.Tensor, float]:
        """One `edit` call for samples `idx` (positions in the batch) at `points`, its output checked.

        Returns the images, point-major ((point, sample) order), clamped to [0, 1], and the seconds
        per image. A subset of the batch is edited from its own inversion (`_single_state`): the
        Method API does not promise which axis of a state is the batch axis.
        """
        method = batch.method
        state = batch.state if len(idx) == len(batch.loaded) else self._single_state(batch, idx[0], report)
        groups = [batch.loaded[b][0] for b in idx]
        samples = [batch.loaded[b][1] for b in idx]
        params = [method.EditParams.model_validate(json.loads(batch.edit_points[k])) for k in points]
        t0 = time.perf_counter()
        # Fresh generators per call: a point's result does not depend on how points are chunked.
        edited = method.edit(self.backbone, state, samples, batch.invert_params, params, self._generators(groups))
        images = check_edit_output(method.name, edited, len(points), len(idx), tuple(batch.sources.shape[-2:]))
        edit_s = self._elapsed(t0)
        report.seconds["edit"] += edit_s
        report.edit_calls += 1
        return images, edit_s / len(images)

    def _single_state(self, batch: _Batch, b: int, report: UnitReport) -> State:
        """Sample `b`'s state from inverting it alone (once per batch; a failure is remembered)."""
        if b not in batch.singles:
            group, sample = batch.loaded[b]
            t0 = time.perf_counter()
            try:
                batch.singles[b] = batch.method.invert(
                    self.backbone, [sample], batch.invert_params, self._generators([group]), seeds=[group.head.seed]
                )
            except Exception:  # noqa: BLE001 - reported on each of the sample's isolated edits
                batch.singles[b] = "inverting the sample alone, to isolate a failure of its batch, failed: " + _describe(
                    traceback.format_exc()
                )
            report.seconds["invert"] += self._elapsed(t0)
            report.invert_calls += 1
        single = batch.singles[b]
        if isinstance(single, str):
            raise RuntimeError(single)
        return single

    def _finish(
        self, batch: _Batch, cells: list[_Cell], edit_s: float, report: UnitReport
    ) -> list[dict[str, Any]]:
        """Score and store edited images; if that raises, each sample's images alone, then each
        image alone, so a scorer or a write that fails costs only the rows it was working on."""
        try:
            return self._score_and_store(batch, cells, edit_s, report)
        except Exception:  # noqa: BLE001 - isolate the failing sample / image
            if len(cells) == 1:
                b, k, _ = cells[0]
                return self._error_cells(batch, [b], [k], _describe(traceback.format_exc()))
        samples = list(dict.fromkeys(c[0] for c in cells))
        parts = [[c for c in cells if c[0] == b] for b in samples] if len(samples) > 1 else [[c] for c in cells]
        return [row for part in parts for row in self._finish(batch, part, edit_s, report)]

    def _score_and_store(
        self, batch: _Batch, cells: list[_Cell], edit_s: float, report: UnitReport
    ) -> list[dict[str, Any]]:
        """Score the cells' images, then write them and make their rows; raises if any of it fails,
        after deleting the images it wrote (so no image is left without its row)."""
        images = torch.stack([image for _, _, image in cells])
        idx = [b for b, _, _ in cells]
        t0 = time.perf_counter()
        scores = self._score(images, batch.sources[idx], [batch.loaded[b][1] for b in idx])
        score_s = time.perf_counter() - t0
        report.seconds["score"] += score_s
        timing = dict(
            invert_s=batch.invert_s / (len(batch.loaded) * len(batch.edit_points)),
            edit_s=edit_s,
            score_s=score_s / len(cells),
        )
        t0 = time.perf_counter()
        rows: list[dict[str, Any]] = []
        try:
            for i, (b, k, image) in enumerate(cells):
                group, sample = batch.loaded[b]
                rows.append(
                    self._result_row(
                        group.tasks[k],
                        sample,
                        image,
                        {n: v[i].item() for n, v in scores.scores.items()},
                        {n: v[i].cpu().numpy() for n, v in scores.features.items()},
                        input_path=batch.inputs[b],
                        timing=timing,
                    )
                )
        except BaseException:
            for row in rows:
                if row.get("image_path"):
                    self.store.delete_image(row["image_path"])
            raise
        report.seconds["store"] += time.perf_counter() - t0
        return rows

    def _score(self, images: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        merged = ScoreBatch()
        finite = torch.isfinite(images.flatten(1)).all(1)
        safe = torch.where(finite.view(-1, 1, 1, 1), images, torch.zeros_like(images))
        for scorer in self.scorers:
            out = scorer.score(safe.to(self.device), sources, samples)
            for name, values in {**out.scores, **out.features}.items():
                if len(values) != len(images):
                    raise ValueError(
                        f"metric {scorer.name!r} returned {len(values)} values of {name!r} for {len(images)} "
                        "images; expected one per image"
                    )
            merged.scores.update(out.scores)
            merged.features.update(out.features)
        return merged

    def _result_row(
        self,
        task: Task,
        sample: Sample,
        image: torch.Tensor,
        scores: dict[str, float],
        features: dict[str, np.ndarray],
        input_path: str,
        timing: dict[str, float],
    ) -> dict[str, Any]:
        common = dict(
            input_path=input_path,
            run_id=self.run_id,
            source_prompt=sample.source_prompt,
            target_prompt=sample.target_prompt,
            labels=sample_labels(sample),
            **self._weights(task),
            worker=self.name,
            device=self.device_name,
            **timing,
        )
        if not bool(torch.isfinite(image).all()):
            return task_row(task, status="error", error="the method produced NaN or infinite pixels", **common)
        path = self.store.write_image(task.task_key, to_pil(image))
        return task_row(task, status="ok", image_path=path, scores=scores, features=features, **common)

    def _error_cells(self, batch: _Batch, idx: list[int], points: list[int], message: str) -> list[dict[str, Any]]:
        """Error rows for samples `idx` at edit points `points` of the batch."""
        return self._error_rows([batch.loaded[b][0].tasks[k] for k in points for b in idx], message)

    def _error_rows(self, tasks: Sequence[Task], message: str) -> list[dict[str, Any]]:
        return [
            task_row(
                t,
                status="error",
                error=message,
                run_id=self.run_id,
                **self._weights(t),
                worker=self.name,
                device=self.device_name,
            )
            for t in tasks
        ]

    def _elapsed(self, t0: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


def _describe(trace: str) -> str:
    """The exception line plus the innermost frames: enough to debug from the row alone."""
    lines = trace.strip().splitlines()
    message = lines[-1]
    if "OutOfMemoryError" in message:
        message += " (lower execution.batch_size or execution.edit_batch_size)"
    return message + "\n" + "\n".join(lines[-7:-1])
