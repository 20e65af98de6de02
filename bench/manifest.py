"""The run manifest (`<run>/manifests/<run_id>.json`) as a typed model.

A manifest records what is needed to reproduce a run (spec, git commit, package versions,
machine) and what `editsweep status` needs without re-planning: the planned task count per method
and dataset. Done and failed counts come from the store, so the planned task keys are not kept.
Reading one that is not JSON or lacks a field is a `ManifestError` naming the file and the field.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ManifestError(ValueError):
    """A manifest file that cannot be read: the message names the file and what is wrong."""


class PlannedCount(BaseModel):
    """How many tasks the run's plan has for one method on one dataset."""

    method: str
    dataset: str
    tasks: int = Field(ge=0)


class RunManifest(BaseModel):
    """One run of a sweep in a run directory. Unknown keys are kept (written by newer versions)."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    started_at: str | None = None
    spec: dict[str, Any]
    finished_at: str | None = None
    git_commit: str | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)
    python: str | None = None
    platform: str | None = None
    host: str | None = None
    devices: dict[str, Any] = Field(default_factory=dict)
    n_tasks: int | None = None
    n_skipped: int | None = None
    planned: list[PlannedCount] | None = None  # None in manifests written before it was recorded
    quarantined: list[str] = Field(default_factory=list)  # result files this run moved aside
    summary: dict[str, Any] | None = None

    @property
    def spec_name(self) -> str:
        """The sweep's name, as the spec gave it."""
        return str(self.spec.get("name", "?"))


def planned_counts(pairs: Iterable[tuple[str, str]]) -> list[PlannedCount]:
    """Counts of (method, dataset) pairs, one per planned task, in first-seen order."""
    return [PlannedCount(method=m, dataset=d, tasks=n) for (m, d), n in Counter(pairs).items()]


def parse_manifest(raw: bytes | str, name: str) -> RunManifest:
    """The manifest in `raw`; `name` (its path or URI) is what errors name."""
    try:
        payload = json.loads(raw)
    except ValueError as err:
        raise ManifestError(f"run manifest {name} is not valid JSON ({err}): remove or restore the file") from None
    if not isinstance(payload, dict):
        raise ManifestError(f"run manifest {name} is not a JSON object: remove or restore the file")
    payload.setdefault("run_id", name.rsplit("/", 1)[-1].removesuffix(".json"))  # the file is named by it
    try:
        return RunManifest.model_validate(payload)
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: "
            + ("missing field" if e["type"] == "missing" else e["msg"])
            for e in err.errors()
        ]
        raise ManifestError(f"run manifest {name} is invalid: " + "; ".join(problems)) from None
