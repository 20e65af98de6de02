"""Shared fixtures: one tiny backbone and one Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # as bench/runner.py: workers share this venv
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    # Each pytest-xdist worker gets its share of the cores (torch reads this at import), so that two
    # workers' thread pools do not oversubscribe them.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RAY_FIXTURES = frozenset({"ray_session", "fake_gpu_ray", "spawn_driver"})


def pytest_itemcollected(item: pytest.Item) -> None:
    """Every test that starts Ray joins one pytest-xdist group: README's `-n 2 --dist loadgroup`
    runs the group in one worker, so a parallel run still has one Ray instance (and no two tests
    share the machine's cores with two clusters), while the other tests spread over both workers.
    Marked as each test is collected: pytest-xdist reads the groups in its collection hook."""
    if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session")
def tiny_backbone():
    """The offline `tiny` backbone, built once (read-only: tests must not modify its weights)."""
    from editsweep.diffusion.backbone import load_backbone

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


@pytest.fixture(scope="session")
def imagenet_layout(tmp_path_factory):
    """A small ImageNet-layout copy of FlexIT's protocol: 6 test queries (3 target classes x 2) in the
    query list's real format (built here, so that no test needs the shared copy), their val images
    as JPEGs in per-class wnid folders, and a train folder with 3 images per target class. Returns a
    dict: queries, val, train, ids, target_wnids."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from editsweep.datasets.imagenet import imagenet_wnids

    base = tmp_path_factory.mktemp("imagenet")
    wnids = imagenet_wnids()
    targets = [1, 2, 3]
    queries = [
        dict(
            path=f"{wnids[10 + k]}/ILSVRC2012_val_{k + 1:08d}.JPEG",
            source=f"class {10 + k}",
            source_id=10 + k,
            target=f"class {targets[k // 2]}",
            target_id=targets[k // 2],
            is_test=True,
        )
        for k in range(6)
    ]
    subset = pd.DataFrame(queries, index=[3000 + 7 * k for k in range(6)])
    subset.to_csv(base / "queries.csv")
    rng = np.random.default_rng(0)

    def save(path, width, height):
        path.parent.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=95)

    for rel in subset["path"]:
        save(base / "val" / rel, 80, 60)
    wnids = imagenet_wnids()
    target_wnids = [wnids[t] for t in targets]
    for wnid in target_wnids:
        for i in range(3):
            save(base / "train" / wnid / f"{wnid}_{i}.JPEG", 72, 90)
    return {
        "queries": base / "queries.csv",
        "val": base / "val",
        "train": base / "train",
        "ids": [str(i) for i in subset.index],
        "target_wnids": target_wnids,
    }


GENERATED_PROMPTS = ["a photo of a cat", "a red car on a road", "a bowl of fruit"]


@pytest.fixture(scope="session")
def generated_samples(tiny_backbone) -> list:
    """Three images sampled by the tiny backbone from its prompts (guidance 7.5, 10 steps): inputs
    that DDIM inversion can reconstruct, shared by the tests of diffusion primitives and methods."""
    import torch

    from editsweep.datasets.base import Sample
    from editsweep.diffusion.ddim import ddim_sample, make_schedule
    from editsweep.diffusion.inputs import to_pil

    backbone = tiny_backbone
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = backbone.encode_text(GENERATED_PROMPTS)
    uncond = backbone.encode_text([""] * 3)
    latents = ddim_sample(backbone, noise, make_schedule(backbone, 10), cond, uncond, 7.5)
    images = backbone.decode(latents)
    return [
        Sample(id=f"gen-{i}", image=to_pil(images[i]), source_prompt=p, target_prompt=p)
        for i, p in enumerate(GENERATED_PROMPTS)
    ]


@pytest.fixture
def generators():
    """Makes one CPU generator per sample, as the worker does: generators(n, seed=0)."""
    import torch

    def make(n: int, seed: int = 0) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed + i) for i in range(n)]

    return make


@pytest.fixture
def diffedit_pipeline():
    """backbone -> diffusers' DiffEdit pipeline on its own modules (fresh schedulers of its config),
    the reference of tests/diffusion/test_diffedit_mask.py and tests/methods/test_diffedit.py."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    from diffusers.pipelines.deprecated import StableDiffusionDiffEditPipeline

    def build(backbone):
        pipeline = StableDiffusionDiffEditPipeline(
            vae=backbone.vae,
            text_encoder=backbone.text_encoder,
            tokenizer=backbone.tokenizer,
            unet=backbone.unet,
            scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
            inverse_scheduler=DDIMInverseScheduler.from_config(backbone.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    return build
