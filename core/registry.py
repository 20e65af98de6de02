"""A name -> class registry: how methods, datasets and scorers become available in sweep specs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Mapping[str, T], Generic[T]):
    """Classes registered by their `name` attribute, with errors that list the known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: make `cls` available under `cls.name`."""
        known = self._classes.get(cls.name)
        # Executing the same module again (importlib.reload, a plugin file imported under its one
        # module name: bench/spec.py `plugin_module_name`) is not a clash; any other class is, even
        # one with the same qualname, so a plugin never silently replaces a built-in.
        if known is not None and _origin(known) != _origin(cls):
            raise ValueError(
                f"{self.kind} name {cls.name!r} is registered twice: by {_origin(known)} and by {_origin(cls)}; "
                "give one of them another name"
            )
        self._classes[cls.name] = cls
        return cls

    def __getitem__(self, name: str) -> T:
        try:
            return self._classes[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self))}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


def _origin(cls: type) -> str:
    """Where a class is defined: `module.qualname`."""
    return f"{cls.__module__}.{cls.__qualname__}"
