"""The base of every registered component's parameters (methods, datasets, scorers)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Parameters from a sweep spec: unknown keys are errors, values are immutable (so hashable
    into task keys and safe to share between the edit points of a group)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
