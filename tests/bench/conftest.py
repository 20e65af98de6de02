"""Helpers for sweep tests: small specs that use the test-only plugin methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

PLUGIN = str(Path(__file__).parent / "plugins" / "faulty_methods.py")


@pytest.fixture
def make_spec():
    """Builds a validated spec dict around the given methods, with the test plugin imported."""
    from editsweep.bench.spec import load_spec

    def make(methods: list[dict[str, Any]], n: int = 3, seeds: list[int] | None = None, **extra: Any):
        raw = {
            "name": "test",
            "imports": [PLUGIN],
            "datasets": [{"name": "synthetic", "params": {"n": n}}],
            "seeds": seeds or [0],
            "methods": methods,
            "metrics": {"psnr": {}},
            **extra,
        }
        return load_spec(raw)

    return make


@pytest.fixture
def plugin():
    """The test plugin module (its INVERTED list records in-process inversions)."""
    import sys

    from editsweep.bench.spec import import_plugins, load_registries

    load_registries()
    import_plugins([PLUGIN])
    return sys.modules["editsweep_plugin_faulty_methods"]
