"""Expand a sweep spec into tasks, groups (one inversion each) and work units (one actor call).

A task is (method, backbone, dtype, dataset instance, sample, seed, invert params, edit params).
A dataset instance is the dataset's name and its parameters with defaults filled in: two entries
of one dataset with different params are different tasks. Keys are sha256 hex digests of
canonical JSON payloads (sorted keys, no whitespace; parameter objects as in `canonical_json`):

- group key: `["editsweep-group-v2", method, backbone, dtype, dataset, dataset_params, sample_id,
  seed, invert_params]`, where the params are JSON objects, not strings;
- task key:  `["editsweep-task-v2", group_key, edit_params]`.

Tasks sharing everything but the edit params form a group: one inversion, then every edit point.
Groups with the same method, dataset instance and parameters are bundled into units of up to
`batch_size` samples, which a worker inverts and edits as one batch. A task given twice (duplicate
method or dataset entries, overlapping grids) is planned once, where it is first seen.

Planning 10**6 tasks must take seconds (BENCHMARKS.md, `bench/plan_scale.py`), so the payloads are
composed from strings serialised once per (method, invert point), per edit point and per group,
each task's key is hashed once at creation from a copy of its group's hash state, and tasks use
`__slots__`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from editsweep.bench.spec import SweepSpec, canonical_json
from editsweep.datasets.base import get_dataset_class

GROUP_TAG = "editsweep-group-v2"
TASK_TAG = "editsweep-task-v2"


class Task:
    """One edited image to produce and score; its keys are computed once, when it is made."""

    __slots__ = (
        "method",
        "backbone",
        "dtype",
        "dataset",
        "dataset_params",
        "sample_id",
        "seed",
        "invert_params",
        "edit_params",
        "group_key",
        "task_key",
    )

    def __init__(
        self,
        method: str,
        backbone: str,
        dtype: str,
        dataset: str,
        sample_id: str,
        seed: int,
        invert_params: str,
        edit_params: str,
        dataset_params: str = "{}",
        group_key: str | None = None,
        task_key: str | None = None,
    ) -> None:
        self.method = method
        self.backbone = backbone
        self.dtype = dtype
        self.dataset = dataset
        self.dataset_params = dataset_params  # canonical JSON, defaults filled in
        self.sample_id = sample_id
        self.seed = seed
        self.invert_params = invert_params  # canonical JSON, defaults filled in
        self.edit_params = edit_params
        if group_key is None:
            group_key = hashlib.sha256(
                _group_prefix(method, backbone, dtype, dataset, dataset_params, sample_id, seed, invert_params)
            ).hexdigest()
        self.group_key = group_key  # identifies the inversion this task shares with the other edit points
        # Stable identity of the task across runs: the resume key and the image file name.
        self.task_key = task_key if task_key is not None else _task_key(group_key, edit_params)

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self.task_key)

    def __repr__(self) -> str:
        return f"Task({self.method!r}, {self.dataset!r}, {self.sample_id!r}, seed={self.seed}, key={self.task_key[:12]})"


def _group_prefix(
    method: str, backbone: str, dtype: str, dataset: str, dataset_params: str, sample_id: str, seed: int, invert: str
) -> bytes:
    """The group payload (see the module docstring), composed from already canonical JSON strings."""
    dumps = json.dumps
    return (
        f'["{GROUP_TAG}",{dumps(method)},{dumps(backbone)},{dumps(dtype)},{dumps(dataset)},{dataset_params},'
        f"{dumps(sample_id)},{int(seed)},{invert}]"
    ).encode()


def _task_key(group_key: str, edit_params: str) -> str:
    return hashlib.sha256(f'["{TASK_TAG}","{group_key}",{edit_params}]'.encode()).hexdigest()


class TaskList(list):
    """The tasks of a sweep, with how many duplicate tasks (same key as an earlier one) were dropped."""

    duplicates: int = 0


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
    """What one actor call processes: groups with the same method, dataset instance and parameters."""

    groups: list[Group]

    @property
    def tasks(self) -> list[Task]:
        """Every task of the unit."""
        return [t for g in self.groups for t in g.tasks]

    @property
    def n_tasks(self) -> int:
        """How many tasks the unit holds (without building the list)."""
        return sum(len(g.tasks) for g in self.groups)

    @property
    def backbone(self) -> tuple[str, str]:
        """The (backbone, dtype) every task of the unit runs on."""
        return self.groups[0].head.backbone, self.groups[0].head.dtype

    @property
    def edit_params(self) -> list[str]:
        """The edit points, in order (the same for every group of the unit)."""
        return [t.edit_params for t in self.groups[0].tasks]


def expand(spec: SweepSpec) -> TaskList:
    """Every distinct task of the sweep, in a deterministic order (first seen wins)."""
    tasks = TaskList()
    seen: set[str] = set()
    interned: dict[str, str] = {}  # one string object per distinct canonical JSON value

    def intern(value: str) -> str:
        return interned.setdefault(value, value)

    sha256 = hashlib.sha256
    for d in spec.datasets:
        dataset_params = intern(d.params_json())
        sample_ids = get_dataset_class(d.name)(d.params).sample_ids()
        for m in spec.methods:
            invert_points = [intern(canonical_json(p)) for p in m.invert_grid()]
            edit_points = [
                (intern(ed), f'["{TASK_TAG}","'.encode(), f'",{ed}]'.encode())
                for ed in (canonical_json(p) for p in m.edit_grid())
            ]
            for backbone in spec.backbones:
                b_name, b_dtype = backbone.name, backbone.dtype
                for sample_id in sample_ids:
                    for seed in spec.seeds:
                        for inv in invert_points:
                            prefix = _group_prefix(m.name, b_name, b_dtype, d.name, dataset_params, sample_id, seed, inv)
                            group_key = sha256(prefix).hexdigest()
                            key_prefix = group_key.encode()
                            for ed, head, tail in edit_points:
                                task_key = sha256(head + key_prefix + tail).hexdigest()
                                if task_key in seen:
                                    tasks.duplicates += 1
                                    continue
                                seen.add(task_key)
                                tasks.append(
                                    Task(
                                        m.name, b_name, b_dtype, d.name, sample_id, seed, inv, ed,
                                        dataset_params, group_key, task_key,
                                    )
                                )
    return tasks


def group_tasks(tasks: Iterable[Task]) -> list[Group]:
    """Tasks grouped by inversion, in first-seen order."""
    groups: dict[str, Group] = {}
    for t in tasks:
        group = groups.get(t.group_key)
        if group is None:
            group = groups[t.group_key] = Group(key=t.group_key)
        group.tasks.append(t)
    return list(groups.values())


def make_units(groups: Iterable[Group], batch_size: int) -> list[Unit]:
    """Bundle groups that can be inverted and edited together into units of <= batch_size groups."""
    buckets: dict[tuple, list[Group]] = {}
    for g in groups:
        h = g.head
        bucket_key = (
            h.backbone, h.dtype, h.method, h.dataset, h.dataset_params, h.invert_params,
            tuple(t.edit_params for t in g.tasks),
        )
        buckets.setdefault(bucket_key, []).append(g)
    return [
        Unit(groups=members[i : i + batch_size])
        for members in buckets.values()
        for i in range(0, len(members), batch_size)
    ]


def plan(spec: SweepSpec, done: set[str] | None = None) -> tuple[TaskList, list[Unit]]:
    """All distinct tasks, and the units of those not in `done` (task keys already stored as ok).

    Units come largest first (most tasks: the longest expected), so the sweep's tail is short.
    `tasks.duplicates` says how many duplicate tasks the spec named and the plan dropped.
    """
    tasks = expand(spec)
    pending = [t for t in tasks if t.task_key not in done] if done else tasks
    units = make_units(group_tasks(pending), spec.execution.batch_size)
    return tasks, sorted(units, key=lambda u: u.n_tasks, reverse=True)


__all__ = ["Group", "Task", "TaskList", "Unit", "canonical_json", "expand", "group_tasks", "make_units", "plan"]
