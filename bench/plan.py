"""Expand a sweep spec into tasks, groups (one inversion each) and work units (one actor call).

A task is (method, backbone, dtype, dataset, sample, seed, invert params, edit params), keyed by the
sha256 of its canonical JSON. Tasks sharing everything but the edit params form a group: one
inversion, then every edit point. Groups with the same method, dataset and parameters are bundled
into units of up to `batch_size` samples, which a worker inverts and edits as one batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from editsweep.bench.spec import SweepSpec
from editsweep.datasets.base import get_dataset_class


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _sha(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass(frozen=True)
class Task:
    """One edited image to produce and score."""

    method: str
    backbone: str
    dtype: str
    dataset: str
    sample_id: str
    seed: int
    invert_params: str  # canonical JSON, defaults filled in
    edit_params: str

    @property
    def group_key(self) -> str:
        """Identifies the inversion this task shares with the other edit points."""
        return _sha(
            dict(
                method=self.method,
                backbone=self.backbone,
                dtype=self.dtype,
                dataset=self.dataset,
                sample_id=self.sample_id,
                seed=self.seed,
                invert_params=json.loads(self.invert_params),
            )
        )

    @property
    def task_key(self) -> str:
        """Stable identity of the task across runs: the resume key and the image file name."""
        return _sha(dict(group=self.group_key, edit_params=json.loads(self.edit_params)))


@dataclass
class Group:
    """Tasks that share one inversion: same sample, seed and inversion parameters."""

    key: str
    tasks: list[Task] = field(default_factory=list)

    @property
    def head(self) -> Task:
        """Any task of the group, for the fields all of them share."""
        return self.tasks[0]


@dataclass
class Unit:
    """What one actor call processes: groups with the same method, dataset and parameters."""

    groups: list[Group]

    @property
    def tasks(self) -> list[Task]:
        """Every task of the unit."""
        return [t for g in self.groups for t in g.tasks]

    @property
    def backbone(self) -> tuple[str, str]:
        """The (backbone, dtype) every task of the unit runs on."""
        return self.groups[0].head.backbone, self.groups[0].head.dtype

    @property
    def edit_params(self) -> list[str]:
        """The edit points, in order (the same for every group of the unit)."""
        return [t.edit_params for t in self.groups[0].tasks]


def expand(spec: SweepSpec) -> list[Task]:
    """Every task of the sweep, in a deterministic order."""
    tasks: list[Task] = []
    for d in spec.datasets:
        sample_ids = get_dataset_class(d.name)(d.params).sample_ids()
        for m in spec.methods:
            invert_points = [canonical_json(p) for p in m.invert_grid()]
            edit_points = [canonical_json(p) for p in m.edit_grid()]
            for backbone in spec.backbones:
                for sample_id in sample_ids:
                    for seed in spec.seeds:
                        for inv in invert_points:
                            for ed in edit_points:
                                tasks.append(
                                    Task(m.name, backbone.name, backbone.dtype, d.name, sample_id, seed, inv, ed)
                                )
    return tasks


def group_tasks(tasks: Iterable[Task]) -> list[Group]:
    """Tasks grouped by inversion, in first-seen order."""
    groups: dict[str, Group] = {}
    for t in tasks:
        groups.setdefault(t.group_key, Group(key=t.group_key)).tasks.append(t)
    return list(groups.values())


def make_units(groups: Iterable[Group], batch_size: int) -> list[Unit]:
    """Bundle groups that can be inverted and edited together into units of <= batch_size groups."""
    buckets: dict[tuple, list[Group]] = {}
    for g in groups:
        h = g.head
        bucket_key = (h.backbone, h.dtype, h.method, h.dataset, h.invert_params, tuple(t.edit_params for t in g.tasks))
        buckets.setdefault(bucket_key, []).append(g)
    return [
        Unit(groups=members[i : i + batch_size])
        for members in buckets.values()
        for i in range(0, len(members), batch_size)
    ]


def plan(spec: SweepSpec, done: set[str] | None = None) -> tuple[list[Task], list[Unit]]:
    """All tasks, and the units of those not in `done` (task keys already stored as ok).

    Units come largest first (most tasks: the longest expected), so the sweep's tail is short.
    """
    tasks = expand(spec)
    pending = [t for t in tasks if t.task_key not in (done or set())]
    units = make_units(group_tasks(pending), spec.execution.batch_size)
    return tasks, sorted(units, key=lambda u: len(u.tasks), reverse=True)
