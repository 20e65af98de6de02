"""The base of every registered component's parameters (methods, datasets, scorers)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.fields import FieldInfo

ADDED = "added_later"


class Params(BaseModel):
    """Parameters from a sweep spec: unknown keys are errors, values are immutable (so hashable
    into task keys and safe to share between the edit points of a group)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def added_field(default: Any, **kwargs: Any) -> Any:
    """A `Field` for a parameter added to a method after its first release: at its default it is
    left out of the dump (so of the task key, bench/plan.py), so that the tasks of the settings
    that existed before keep their keys and stored results (use it in a `KeepsTaskKeys` model)."""
    return Field(default, json_schema_extra={ADDED: True}, **kwargs)


class KeepsTaskKeys(Params):
    """Parameters some of whose fields are `added_field`s: those are dumped only when set to
    something other than their default."""

    @model_serializer(mode="wrap")
    def _without_added_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and extra.get(ADDED) and name in data and getattr(self, name) == field.default:
                del data[name]
        return data


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
