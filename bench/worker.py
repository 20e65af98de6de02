"""The sweep worker: owns one device, a loaded backbone and the scorers, and processes units.

`SweepWorker` is a plain class, so tests can drive it in-process; the runner wraps it as a Ray
actor. A unit is inverted as one batch and edited in chunks of edit points (halved on GPU out of
memory); it writes the images to the store and returns the result rows, which the driver writes
in one Parquet batch per unit as soon as they arrive (one writer of the results table; a worker
that dies before returning loses only its own unit, which is retried). Failures are contained: an edit chunk that
raises is retried point by point and a failing point becomes error rows while the group's other
points go on; a batch whose inversion raises is retried group by group, and a group that still
fails becomes error rows with the exception's message.
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
from typing import Any

import numpy as np
import torch

from editsweep.bench.metrics.base import ScoreBatch, get_scorer_class
from editsweep.bench.plan import Group, Task, Unit
from editsweep.bench.rundir import check_marker as check_run_marker
from editsweep.bench.spec import SweepSpec, load_spec
from editsweep.bench.store import RunStore
from editsweep.datasets.base import Sample, get_dataset_class, sample_labels
from editsweep.datasets.images import fit_square
from editsweep.methods.backbone import load_backbone
from editsweep.methods.base import Method, get_method_class, images_tensor, to_pil


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


def task_row(task: Task, **fields: Any) -> dict[str, Any]:
    """A result row for `task` with the plan's identity columns filled in."""
    row = dict(
        task_key=task.task_key,
        group_key=task.group_key,
        method=task.method,
        dataset=task.dataset,
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
        self.backbone = load_backbone(first.name, self.device, first.dtype)
        self.backbone_key = (first.name, first.dtype)
        self.scorers = [get_scorer_class(n)(p or {}, self.device) for n, p in self.spec.metrics.items()]
        self.datasets = {d.name: get_dataset_class(d.name)(d.params) for d in self.spec.datasets}
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
            worker=self.name, device=self.device_name, backbone=self.backbone_key[0], init_seconds=self.init_seconds
        )

    def _use_backbone(self, key: tuple[str, str], report: UnitReport) -> None:
        """Load the unit's backbone if it is not the one held (the driver keeps this rare)."""
        if key == self.backbone_key:
            return
        t0 = time.perf_counter()
        self.backbone = None  # free the old weights before loading the new ones
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.backbone = load_backbone(key[0], self.device, key[1])
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
            try:
                rows += self._run_batch(loaded, report)
            except Exception:  # noqa: BLE001 - isolate the failing group(s)
                if len(loaded) == 1:
                    rows += self._error_rows(loaded[0][0].tasks, _describe(traceback.format_exc()))
                else:
                    for item in loaded:
                        try:
                            rows += self._run_batch([item], report)
                        except Exception:  # noqa: BLE001
                            rows += self._error_rows(item[0].tasks, _describe(traceback.format_exc()))
        report.rows = rows
        report.finished_at = time.time()
        report.n_ok += sum(r["status"] == "ok" for r in rows)
        report.n_error += sum(r["status"] == "error" for r in rows)
        return report

    def _load_sample(self, task: Task) -> Sample:
        sample = self.datasets[task.dataset].load(task.sample_id)
        if not sample.target_prompt:
            raise ValueError("the sample has no target prompt")
        sample.image = fit_square(sample.image, self.backbone.resolution)
        return sample

    def _generators(self, groups: Sequence[Group]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(sample_seed(g.head.seed, g.head.sample_id)) for g in groups]

    def _run_batch(self, loaded: list[tuple[Group, Sample]], report: UnitReport) -> list[dict[str, Any]]:
        groups = [g for g, _ in loaded]
        samples = [s for _, s in loaded]
        head = groups[0].head
        method = self.methods[head.method]
        invert_params = method.InvertParams.model_validate(json.loads(head.invert_params))
        edit_points = [t.edit_params for t in groups[0].tasks]
        batch = len(samples)

        t0 = time.perf_counter()
        extra = {"seeds": [g.head.seed for g in groups]} if method.needs_seeds else {}
        state = method.invert(self.backbone, samples, invert_params, self._generators(groups), **extra)
        invert_s = self._elapsed(t0)
        report.seconds["invert"] += invert_s
        report.invert_calls += 1
        sources = images_tensor(samples, self.device)
        inputs = [self.store.write_input(g.head.dataset, s.id, s.image) for g, s in loaded]
        rows: list[dict[str, Any]] = []
        chunk = len(edit_points) if method.edit_points_together else max(1, self.spec.execution.edit_batch_size // batch)
        start = 0
        one_by_one_until = 0  # after a failing chunk, its points are retried alone to isolate the culprit
        while start < len(edit_points):
            size = 1 if start < one_by_one_until else chunk
            points = list(range(start, min(start + size, len(edit_points))))
            params = [method.EditParams.model_validate(json.loads(edit_points[k])) for k in points]
            t0 = time.perf_counter()
            try:
                # Fresh generators per call: a point's result does not depend on how points are chunked.
                edited = method.edit(self.backbone, state, samples, invert_params, params, self._generators(groups))
            except torch.cuda.OutOfMemoryError:
                if len(points) == 1:
                    raise
                chunk = len(points) // 2  # halve the edit batch and try again before giving up
                report.oom_retries += 1
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            except Exception:  # noqa: BLE001 - one failing edit point must not fail its group
                if len(points) > 1:
                    one_by_one_until = start + len(points)
                else:
                    message = _describe(traceback.format_exc())
                    rows += self._error_rows([g.tasks[points[0]] for g in groups], message)
                    start += 1
                continue
            start += len(points)
            edit_s = self._elapsed(t0)
            report.seconds["edit"] += edit_s
            report.edit_calls += 1
            images = torch.cat([e.float() for e in edited])
            t0 = time.perf_counter()
            scores = self._score(images, sources.repeat(len(points), 1, 1, 1), samples * len(points))
            score_s = time.perf_counter() - t0
            report.seconds["score"] += score_s
            n_images = len(points) * batch
            t0 = time.perf_counter()
            for j, k in enumerate(points):
                for b, (group, sample) in enumerate(loaded):
                    i = j * batch + b
                    rows.append(
                        self._result_row(
                            group.tasks[k],
                            sample,
                            images[i],
                            {n: v[i].item() for n, v in scores.scores.items()},
                            {n: v[i].cpu().numpy() for n, v in scores.features.items()},
                            input_path=inputs[b],
                            timing=dict(
                                invert_s=invert_s / (batch * len(edit_points)),
                                edit_s=edit_s / n_images,
                                score_s=score_s / n_images,
                            ),
                        )
                    )
            report.seconds["store"] += time.perf_counter() - t0
        return rows

    def _score(self, images: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        merged = ScoreBatch()
        finite = torch.isfinite(images.flatten(1)).all(1)
        safe = torch.where(finite.view(-1, 1, 1, 1), images, torch.zeros_like(images))
        for scorer in self.scorers:
            out = scorer.score(safe.to(self.device), sources, samples)
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
