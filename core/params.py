"""The base of every registered component's parameters (methods, datasets, scorers)."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo


class Params(BaseModel):
    """Parameters from a sweep spec: unknown keys are errors, values are immutable (so hashable
    into task keys and safe to share between the edit points of a group)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def numeric_type(field: FieldInfo | None) -> type | None:
    """int or float for a numeric parameter, also an optional one (`int | None`, where None means
    a default that depends on the backbone, e.g. methods/flowedit.py); None for any other."""
    if field is None:
        return None
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0] if len(options) == 1 else None
    return annotation if annotation in (int, float) else None
