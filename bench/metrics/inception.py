"""Inception-v3 pool3 features (2048-d) of each edited image, stored for the report's SFID/CSFID/FID/KID.

Preprocessing follows FlexIT's eval.py: resize the short side to `size` (256) and center-crop to
`size` x `size`, then quantise to 8 bits (FlexIT reads its edits back from PNG files). The network
is torch-fidelity's `FeatureExtractorInceptionV3` (what torchmetrics' FID uses) with the FID
Inception weights `weights-inception-2015-12-05-6726825d.pth`, the same TF graph weights as
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`. One difference from FlexIT, named here:
FlexIT ran pytorch-fid's InceptionV3 (PyTorch bilinear resize to 299, 2x-1 normalisation), while
torch-fidelity resizes like TensorFlow 1 and normalises (x-128)/128; features differ slightly.

No score is returned, only features ("inception"). The weights never download here: "pretrained"
reads the torch hub cache (`$TORCH_HOME/hub/checkpoints/`), a path names the file, and "random" is
a small seeded CNN (64-d features) for tests, recorded as such in every row.
"""

from __future__ import annotations

import hashlib
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, ScorerWeightsError, register_scorer
from editsweep.datasets.base import Sample

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch hub names files <name>-<first 8 hex digits of their sha256>
RANDOM_SEED = 0
RANDOM_DIM = 64
FEATURE = "inception"


class InceptionParams(ScorerParams):
    """`weights`: "pretrained" (torch hub cache), a path to the weights file, or "random" (tests)."""

    size: int = Field(
        256, ge=16, le=1024, description="resize short side + center crop, before Inception (FlexIT: 256)"
    )
    batch_size: int = Field(32, ge=1, description="images per forward pass")


def resolve_weights(weights: str) -> Path:
    """The local FID Inception weights file for "pretrained" or a path; ScorerWeightsError if missing."""
    if weights == "pretrained":
        path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
        if not path.is_file():
            raise ScorerWeightsError(
                f"the inception scorer needs the FID Inception weights {WEIGHTS_FILE}, not found at {path}. "
                f"Download {WEIGHTS_URL} on a connected machine into $TORCH_HOME/hub/checkpoints/ (TORCH_HOME now "
                f"resolves to {Path(torch.hub.get_dir()).parent}), or set `weights: /path/to/{WEIGHTS_FILE}`; "
                "`weights: random` gives uncomparable features for smoke tests."
            )
        return path
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise ScorerWeightsError(
            f"FID Inception weights file {path} does not exist (expected {WEIGHTS_FILE} from {WEIGHTS_URL})"
        )
    return path


@lru_cache(maxsize=4)
def file_sha256(path: str) -> str:
    """sha256 of a weights file (hashed once per process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class RandomFeatureNet(torch.nn.Module):
    """A small seeded CNN with the FID extractor's interface (uint8 in, (N, d) out), for tests only."""

    def __init__(self, dim: int = RANDOM_DIM) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 5, stride=4),
                torch.nn.ReLU(),
                torch.nn.Conv2d(16, dim, 3, stride=2),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
            )
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.net((x.float() - 128) / 128),)


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision `Resize(size)` + `CenterCrop(size)` (FlexIT's `resize(n)`) on a (N,3,H,W) [0,1] batch."""
    from torchvision.transforms.v2 import functional as TF

    h, w = images.shape[-2:]
    new_hw = [size, int(size * w / h)] if h <= w else [int(size * h / w), size]
    x = TF.resize(images, new_hw, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(x, [size, size]).clamp(0.0, 1.0)


@register_scorer
class InceptionScorer(Scorer):
    """Inception-v3 pool3 features of each edit (FID weights), for the report's set-level metrics."""

    name = "inception"
    columns = {}  # features only: the report's set-level metrics (`reports/set_level/`) read them
    Params = InceptionParams

    def __init__(self, params: InceptionParams | dict[str, Any] | None, device: torch.device) -> None:
        super().__init__(params, device)
        p: InceptionParams = self.params
        if p.weights == "random":
            model: torch.nn.Module = RandomFeatureNet()
            self._source = f"random-cnn{RANDOM_DIM}:seed{RANDOM_SEED}:crop{p.size}"
        else:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            path = resolve_weights(p.weights)
            digest = file_sha256(str(path))
            if p.weights == "pretrained" and not digest.startswith(WEIGHTS_SHA256_PREFIX):
                raise ScorerWeightsError(
                    f"{path} is not {WEIGHTS_FILE} (sha256 {digest[:16]}..., expected {WEIGHTS_SHA256_PREFIX}...): "
                    f"download it again from {WEIGHTS_URL}"
                )
            try:
                # torch-fidelity unpickles the file with weights_only=False: make sure it holds only tensors first.
                torch.load(path, map_location="cpu", weights_only=True)
                model = FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
                )
            except (RuntimeError, OSError, KeyError, EOFError, pickle.UnpicklingError) as e:
                raise ScorerWeightsError(f"cannot load FID Inception weights from {path}: {e}") from e
            self._source = f"fid-inception-v3:sha256-{digest[:16]}:crop{p.size}"
        self.model = model.to(device)

    @property
    def weights_source(self) -> str:
        """The extractor's identity: architecture, weights hash (or seed) and crop size.

        Reference statistics record it too; the report refuses stats made with another extractor.
        """
        return self._source

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, d) float32 features of a (N,3,H,W) [0,1] batch, after FlexIT's resize + crop and 8-bit rounding."""
        out = []
        for chunk in images.split(self.params.batch_size):
            x = resize_center_crop(chunk.to(self.device, torch.float32), self.params.size)
            x = (x * 255).round().to(torch.uint8)
            out.append(self.model(x)[0].float().cpu())
        return torch.cat(out)

    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """Features only (no per-image score): the report turns them into SFID, CSFID, FID and KID."""
        return ScoreBatch(features={FEATURE: self.features(edited)})
