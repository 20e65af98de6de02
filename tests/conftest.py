"""Shared fixtures: one tiny backbone and one Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # as bench/runner.py: workers share this venv
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_backbone():
    """The offline `tiny` backbone, built once (read-only: tests must not modify its weights)."""
    from editsweep.methods.backbone import load_backbone

    return load_backbone("tiny")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that runs a sweep."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def fake_gpu_ray():
    """A local Ray instance that advertises 4 GPUs (actors get CUDA_VISIBLE_DEVICES, no real GPU).

    Replaces the session's instance for one test and puts a plain one back afterwards.
    """
    import ray

    was_running = ray.is_initialized()
    ray.shutdown()
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if was_running:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
