"""Aesthetic score: the LAION "improved aesthetic predictor" on the edited image.

An MLP head, Linear(768,1024) Dropout(0.2) Linear(1024,128) Dropout(0.2) Linear(128,64)
Dropout(0.1) Linear(64,16) Linear(16,1) with no activations (so an affine map at eval time), applied
to the L2-normalised OpenAI CLIP ViT-L/14 image embedding; the output is on the AVA scale (about 1
to 10, higher is better). The stored score "aesthetic" is that raw output.

Weights, two parts:
- the CLIP image tower via open_clip (`weights`: "pretrained" = `ViT-L-14:openai` from the HF cache,
  failing fast offline; or a local open_clip file/folder as for CLIP-T);
- the head (`head`): "pretrained" = `sac+logos+ava1-l14-linearMSE.pth` from the predictor's GitHub
  repository at a pinned commit, checked against its sha256 and cached under
  `$TORCH_HOME/hub/checkpoints/`; or a local .pth/.safetensors state dict with the same keys.
`weights: random` builds a tiny seeded random CLIP (768-d embedding) and a seeded random head, for
smoke tests only.

Protocol note: the reference script runs OpenAI's `clip` package, which loads ViT-L/14 in fp16 on a
GPU; here the CLIP tower runs in fp32, so scores may differ from it in the third decimal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, ScorerWeightsError, register_scorer
from editsweep.bench.metrics.clip_t import clip_preprocess
from editsweep.core.clip_models import load_local_clip, open_clip_tag_kwargs, resolve_pretrained_checkpoint
from editsweep.core.hub import hf_offline
from editsweep.datasets.base import Sample

log = logging.getLogger(__name__)

RANDOM_SEED = 0
EMBED_DIM = 768
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
HEAD_COMMIT = "6934dd81792f086e613a121dbce43082cb8be85e"
HEAD_URL = (
    "https://raw.githubusercontent.com/christophschuhmann/improved-aesthetic-predictor/"
    f"{HEAD_COMMIT}/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
DOWNLOAD_TIMEOUT_S = 30
# A few-layer CLIP with the real embedding width, so the real head shape works with random weights.
TINY_CLIP = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


class AestheticParams(ScorerParams):
    """The CLIP tower (`weights` as for CLIP-T, "random" = tiny random CLIP and head) and the head."""

    model: str = Field("ViT-L-14", description="open_clip architecture of the image tower")
    pretrained_tag: str = Field("openai", description="open_clip pretrained tag (preprocessing and QuickGELU)")
    head: str = Field(
        "pretrained",
        description="'pretrained' (the LAION head, downloaded once at a pinned commit and sha256-checked) "
        "or a local .pth/.safetensors state dict; ignored with weights: random",
    )


class AestheticHead(torch.nn.Module):
    """The predictor's MLP (keys `layers.{0,2,4,6,7}`): no activation between the linear layers."""

    def __init__(self, in_features: int = EMBED_DIM) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(in_features, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, 768) normalised embeddings -> (N, 1) scores."""
        return self.layers(embeddings)


def head_cache_path() -> Path:
    """Where the pretrained head is cached: the torch hub checkpoints folder (TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / HEAD_FILE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_head(path: Path) -> None:
    """Download the head to `path` through a temp file, keeping it only if its sha256 matches.

    urllib with a timeout (torch.hub's downloader has none, and would hang on a blocked network).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".aesthetic-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(HEAD_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        got = _sha256(Path(tmp))
        if got != HEAD_SHA256:
            raise ScorerWeightsError(
                f"aesthetic head downloaded from {HEAD_URL} has sha256 {got}, expected {HEAD_SHA256}"
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_head(head: str) -> Path:
    """The local head file for `head` ("pretrained" or a path), or ScorerWeightsError saying how to get it."""
    if head != "pretrained":
        path = Path(head).expanduser()
        if not path.is_file():
            raise ScorerWeightsError(f"aesthetic head file {path} does not exist (head: {head!r})")
        return path
    path = head_cache_path()
    if path.is_file():
        got = _sha256(path)
        if got != HEAD_SHA256:
            raise ScorerWeightsError(
                f"aesthetic head {path} has sha256 {got}, expected {HEAD_SHA256}: delete it to download it again"
            )
        return path
    how = (
        f"download {HEAD_URL} on a connected machine (sha256 {HEAD_SHA256}) into {path.parent} "
        f"(TORCH_HOME now resolves to {Path(torch.hub.get_dir()).parent}), or set the scorer's "
        f"`head: /path/to/{HEAD_FILE}`; `weights: random` gives uncomparable scores for smoke tests"
    )
    if hf_offline():
        raise ScorerWeightsError(f"aesthetic head {HEAD_FILE} is not cached at {path} (HF_HUB_OFFLINE is set): {how}")
    try:
        _download_head(path)
    except OSError as exc:  # URLError and timeouts are OSErrors
        raise ScorerWeightsError(f"aesthetic head {HEAD_FILE} could not be downloaded ({exc}): {how}") from exc
    return path


def load_head(path: Path) -> AestheticHead:
    """An `AestheticHead` with the state dict at `path` (torch zip/pickle, or safetensors)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ScorerWeightsError(f"aesthetic head file {path} cannot be read: {exc}") from exc
    head = AestheticHead()
    try:
        head.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ScorerWeightsError(
            f"aesthetic head file {path} does not fit Linear(768,1024)..Linear(16,1) (keys layers.0,2,4,6,7): {exc}"
        ) from exc
    return head


def _tiny_random_clip() -> torch.nn.Module:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import set_model_preprocess_cfg

    model = open_clip.CLIP(**TINY_CLIP, quick_gelu=True)
    set_model_preprocess_cfg(
        model,
        {
            "size": TINY_CLIP["vision_cfg"]["image_size"],
            "mean": OPENAI_DATASET_MEAN,
            "std": OPENAI_DATASET_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    )
    return model


@register_scorer
class AestheticScorer(Scorer):
    """LAION aesthetic score of each edited image (inputs and prompts are not used); higher is better."""

    name = "aesthetic"
    display = "Aesthetic score"
    higher_is_better = True
    meaning = "more aesthetic"
    Params = AestheticParams

    def __init__(self, params: AestheticParams | dict[str, Any] | None, device: torch.device) -> None:
        import open_clip

        super().__init__(params, device)
        p: AestheticParams = self.params
        if p.weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = _tiny_random_clip()
                head = AestheticHead()
            self._source = "tiny-clip:random+head:random"
        else:
            tag_kwargs = open_clip_tag_kwargs(p.model, p.pretrained_tag)
            problems: list[str] = []  # both parts are checked, so one error names everything missing
            head_path = clip = None
            try:
                head_path = resolve_head(p.head)
            except ScorerWeightsError as exc:
                problems.append(str(exc))
            try:
                if p.weights == "pretrained":
                    checkpoint = resolve_pretrained_checkpoint(p.model, p.pretrained_tag, scorer="aesthetic (CLIP)")
                    model = open_clip.create_model(p.model, pretrained=checkpoint, **tag_kwargs)
                    clip = (model, f"{p.model}:{p.pretrained_tag}")
                else:
                    model, source, _ = load_local_clip(p.model, p.weights, tag_kwargs, scorer="aesthetic (CLIP)")
                    clip = (model, source)
            except ScorerWeightsError as exc:
                problems.append(str(exc))
            if problems:
                raise ScorerWeightsError("\n".join(problems))
            head = load_head(head_path)
            model, clip_source = clip
            self._source = f"{clip_source}+head:{head_path}"
        self.model = model.to(device).eval()
        self.head = head.to(device).eval()
        dim = self.model.visual.output_dim
        if dim != EMBED_DIM:
            raise ScorerWeightsError(
                f"aesthetic head takes {EMBED_DIM}-d CLIP embeddings; {self._source} gives {dim}-d"
            )
        self.preprocess_cfg = open_clip.get_model_preprocess_cfg(self.model)
        self._mean = torch.tensor(self.preprocess_cfg["mean"], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess_cfg["std"], device=device).view(1, 3, 1, 1)
        log.info("aesthetic: %s on %s", self._source, device)

    @property
    def weights_source(self) -> str:
        """E.g. 'ViT-L-14:openai+head:/root/.cache/torch/hub/checkpoints/sac+logos+ava1-l14-linearMSE.pth'."""
        return self._source

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (N, 768) of a (N,3,H,W) [0,1] batch."""
        x = clip_preprocess(images.to(self.device, torch.float32), self.preprocess_cfg, self._mean, self._std)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """The head's output per edited image (AVA scale)."""
        return ScoreBatch(scores={"aesthetic": self.head(self.embeddings(edited)).flatten().float().cpu()})
