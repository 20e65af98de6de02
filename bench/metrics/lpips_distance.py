"""LPIPS between the edited image and its input (fidelity), with the `lpips` package (v0.1).

Conventions differ between papers; the stored "lpips" is the raw distance (not x100 / x1000):
TEdBench-style papers use VGG (the default here); FlexIT/DiffEdit ImageNet uses AlexNet with
normalize=True at 256 px and reports x100; PIE-Bench's unedited-region LPIPS uses SqueezeNet on
[-1, 1] inputs and reports x10^3. Images are compared at the resolution they come in, or after
FlexIT's resize + center crop to `size` (256 for the ImageNet protocol).

The `lpips` package ships only its linear heads; the backbone is torchvision's ImageNet weights.
They are read from the torch hub cache (or a given file) and never downloaded here: torchvision
would otherwise try the network and fail (or hang) on an offline worker. `lpips` and torchvision
are imported when a scorer is built, not when the registry is imported.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, ScorerWeightsError, register_scorer
from editsweep.bench.metrics.inception import resize_center_crop
from editsweep.datasets.base import Sample

RANDOM_SEED = 0
_BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


class LpipsParams(ScorerParams):
    """Backbone and `weights`: "pretrained" (torchvision file in the torch hub cache), "random"
    (random backbone, the package's linear heads), or a path to the torchvision backbone file
    (or a folder holding it under its standard name)."""

    net: Literal["alex", "vgg", "squeeze"] = "vgg"
    size: int | None = Field(
        None, ge=16, le=2048, description="resize short side + center crop both images first (FlexIT: 256); none: as is"
    )


def backbone_file(net: str) -> tuple[str, str]:
    """(file name, download URL) of the torchvision ImageNet weights that LPIPS `net` uses."""
    from torchvision import models

    url = getattr(models, _BACKBONE_WEIGHTS[net]).IMAGENET1K_V1.url
    return os.path.basename(url), url


def _resolve_backbone(net: str, weights: str) -> Path:
    """The local backbone checkpoint for `weights` ("pretrained" or a path), or ScorerWeightsError."""
    name, url = backbone_file(net)
    if weights == "pretrained":
        path = Path(torch.hub.get_dir()) / "checkpoints" / name
        if not path.is_file():
            raise ScorerWeightsError(
                f"LPIPS ({net}) needs torchvision's ImageNet backbone {name}, not found at {path}. "
                f"Download {url} on a connected machine into $TORCH_HOME/hub/checkpoints/ (TORCH_HOME now "
                f"resolves to {Path(torch.hub.get_dir()).parent}), or set the scorer's `weights: /path/to/{name}`; "
                f"`weights: random` gives uncomparable scores for smoke tests."
            )
        return path
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise ScorerWeightsError(f"LPIPS ({net}) backbone file {path} does not exist (expected {name} from {url})")
    return path


def _load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Load a torchvision `features.*` checkpoint into LPIPS' sliced backbone (slices keep the indices)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ScorerWeightsError(f"LPIPS backbone file {path} cannot be read: {exc}") from exc
    used: set[str] = set()
    try:
        for chunk in model.net.children():
            for index, layer in chunk.named_children():
                prefix = f"features.{index}."
                sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                layer.load_state_dict(sub)
                used.update(prefix + k for k in sub)
    except RuntimeError as exc:
        raise ScorerWeightsError(f"LPIPS backbone file {path} does not fit the {model.pnet_type} trunk: {exc}") from exc
    unused = sorted(k for k in state if k.startswith("features.") and k not in used)
    if not used or unused:
        raise ScorerWeightsError(f"LPIPS backbone file {path} does not fit the {model.pnet_type} trunk: unused {unused}")


@register_scorer
class LpipsScorer(Scorer):
    """LPIPS v0.1 distance between each edited image and its input; lower is closer."""

    name = "lpips"
    display = "LPIPS"
    higher_is_better = False
    meaning = "more faithful"
    scale = 1e3  # PIE-Bench's x10^3 (METRICS.md)
    Params = LpipsParams

    def __init__(self, params: LpipsParams | dict[str, Any] | None, device: torch.device) -> None:
        import lpips

        super().__init__(params, device)
        p: LpipsParams = self.params
        backbone = None if p.weights == "random" else _resolve_backbone(p.net, p.weights)
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.filterwarnings("ignore", message=".*(pretrained|weights).*deprecated", category=UserWarning)
            torch.manual_seed(RANDOM_SEED)
            model = lpips.LPIPS(net=p.net, pnet_rand=True, verbose=False)
        if backbone is not None:
            _load_backbone(model, backbone)
        self._source = f"{p.net}:random" if backbone is None else f"{p.net}:{backbone}"
        self.model = model.to(device).eval()

    @property
    def weights_source(self) -> str:
        """'vgg:random' or 'vgg:/path/to/vgg16-397923af.pth' (the backbone file that was loaded)."""
        return self._source

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """Raw LPIPS per image for [0,1] inputs (normalize=True maps them to [-1, 1])."""
        a = edited.to(self.device, torch.float32)
        b = sources.to(self.device, torch.float32)
        if self.params.size is not None:
            a, b = resize_center_crop(a, self.params.size), resize_center_crop(b, self.params.size)
        return ScoreBatch(scores={"lpips": self.model(a, b, normalize=True).flatten().cpu()})
