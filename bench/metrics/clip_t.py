"""CLIP-T: cosine similarity between the CLIP embeddings of the edited image and the target prompt.

The stored score "clip_t" is the raw cosine in [-1, 1]. torchmetrics `CLIPScore` (and PIE-Bench,
which uses it with `openai/clip-vit-large-patch14`) reports 100 * max(cos, 0) instead; the report
converts when it compares with those numbers.

Weights come from open_clip. "pretrained" resolves the tag's Hugging Face hub file in the local
cache first and fails fast offline (open_clip itself would retry the download for ~46 s).
open_clip and huggingface_hub are imported when a scorer is built (importing open_clip takes
~15 s on CPU and the registry is also imported where no scorer runs).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, ScorerWeightsError, register_scorer
from editsweep.core.hub import hf_cache_dir, hf_offline
from editsweep.datasets.base import Sample

log = logging.getLogger(__name__)

RANDOM_SEED = 0
_LOCAL_DIR = "local-dir:"
_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # open_clip's default hub file name
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # and its safetensors alternative


class ClipTParams(ScorerParams):
    """open_clip architecture and pretrained tag; `weights` as in `ScorerParams`, or "toy": the toy
    CLIP trained on the toy world (`toy/train.py`), for runs on the `shapes` dataset.

    A `weights` path is either an open_clip checkpoint file for `model` (.safetensors/.bin/.pt),
    or a folder (optionally written "local-dir:/path") with `open_clip_config.json` and weights, in
    which case the folder's config defines the model and `model` is ignored.
    """

    model: str = "ViT-L-14"
    pretrained_tag: str = "openai"


def _candidate_files(filename: str) -> list[str]:
    """The hub file names open_clip would try for a tag, safetensors alternative first."""
    if filename == _HF_WEIGHTS_NAME:
        return [_HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def open_clip_tag_kwargs(model: str, tag: str) -> dict[str, Any]:
    """`create_model` keywords that make any weights for `model` behave like the tag's.

    The tag says how its weights were trained: QuickGELU (e.g. ViT-L-14:openai, which the plain
    ViT-L-14 config lacks) and preprocessing; use it for files and random weights as well.
    """
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(model, tag)
    return {
        "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
        "force_preprocess_cfg": {k: tag_cfg[k] for k in _TAG_PREPROCESS_KEYS if k in tag_cfg},
    }


def resolve_pretrained_checkpoint(model: str, tag: str, scorer: str = "CLIP-T") -> str:
    """Local path of the checkpoint for an open_clip (model, tag): from the HF cache, or downloaded.

    `scorer` names who needs the weights in the error message.

    Raises `ScorerWeightsError` at once when the file is not cached and HF_HUB_OFFLINE is set,
    and after the first connection failure otherwise.
    """
    import open_clip
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ScorerWeightsError(f"open_clip has no pretrained tag {tag!r} for model {model!r} (known tags: {known})")
    if not cfg.get("hf_hub"):
        raise ScorerWeightsError(f"open_clip tag {model}:{tag} has no hub entry; set weights: /path/to/file")
    repo_id, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" means open_clip's default file name
    candidates = _candidate_files(filename or _HF_WEIGHTS_NAME)
    cache_dir = hf_cache_dir()
    for name in candidates:
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(cached, str):
            return cached

    def missing(reason: str) -> ScorerWeightsError:
        return ScorerWeightsError(
            f"{scorer} weights for open_clip {model}:{tag} are not available ({reason}): none of "
            f"{', '.join(candidates)} from hub repo {repo_id} is in the HF cache {cache_dir}. Provide them: "
            f"on a connected machine run `hf download {repo_id} {candidates[0]}` (or {candidates[-1]}) with the "
            f"same HF_HOME/HF_HUB_CACHE, or copy the file here and set the scorer's "
            f"`weights: /path/to/open_clip_weights.safetensors|.bin` (or a local-dir folder with "
            f"open_clip_config.json + weights); `weights: random` gives uncomparable scores for smoke tests."
        )

    if hf_offline():
        raise missing("HF_HUB_OFFLINE is set")
    error: Exception | None = None
    for name in candidates:
        try:
            return hf_hub_download(repo_id, name, cache_dir=cache_dir)
        except LocalEntryNotFoundError as exc:  # no connection: the other names would fail the same way
            raise missing(f"download failed: {exc}") from exc
        except (HfHubHTTPError, EntryNotFoundError) as exc:  # the hub answered "not here": try the next name
            error = exc
        except OSError as exc:
            raise missing(f"download failed: {exc}") from exc
    raise missing(f"download failed: {error}") from error


TOY_CLIP_SOURCE = "toy:clip"


def toy_clip_dir() -> Path:
    """The toy CLIP's open_clip folder, shipped with the package (trained by `toy/train.py`)."""
    from editsweep.toy.models import CLIP_FOLDER, WEIGHTS_DIR

    return WEIGHTS_DIR / CLIP_FOLDER


def _local_dir(weights: str) -> Path | None:
    """The folder when `weights` names an open_clip model folder, else None."""
    path = Path(weights.removeprefix(_LOCAL_DIR)).expanduser()
    return path if weights.startswith(_LOCAL_DIR) or path.is_dir() else None


def load_local_clip(
    model_name: str, weights: str, tag_kwargs: dict[str, Any], scorer: str = "CLIP-T"
) -> tuple[torch.nn.Module, str, str]:
    """(model, weights_source, tokenizer name) from a local checkpoint file or open_clip folder."""
    import open_clip

    local_dir = _local_dir(weights)
    if local_dir is not None:
        if not (local_dir / "open_clip_config.json").is_file():
            raise ScorerWeightsError(f"{scorer} weights folder {local_dir} has no open_clip_config.json")
        name, kwargs, source = f"{_LOCAL_DIR}{local_dir}", {}, f"{_LOCAL_DIR}{local_dir}"
    else:
        checkpoint = str(Path(weights).expanduser())
        if not os.path.isfile(checkpoint):
            raise ScorerWeightsError(f"{scorer} weights file {checkpoint} does not exist (weights: {weights!r})")
        name, kwargs, source = model_name, {"pretrained": checkpoint, **tag_kwargs}, f"{model_name}:{checkpoint}"
    try:
        model = open_clip.create_model(name, require_pretrained=True, **kwargs)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ScorerWeightsError(f"{scorer} weights {source} cannot be loaded into open_clip: {exc}") from exc
    return model, source, name


def clip_preprocess(images: torch.Tensor, cfg: dict[str, Any], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """open_clip's eval transform on a (N,3,H,W) [0,1] batch: resize, center crop (or pad), normalise.

    Same steps as the PIL pipeline (antialiased resize with the tag's interpolation, bicubic
    for CLIP), done on the tensor; values are clamped to [0,1] after resizing as 8-bit PIL would.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    size = cfg["size"]
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    h, w = images.shape[-2:]
    mode = cfg.get("resize_mode", "shortest")
    if mode == "squash":
        new_hw = [th, tw]
    else:
        scale = min(th / h, tw / w) if mode == "longest" else max(th / h, tw / w)
        new_hw = [max(1, round(h * scale)), max(1, round(w * scale))]
        if mode == "shortest" and th == tw:  # torchvision Resize(int): short side exact, long side truncated
            new_hw = [th, int(th * w / h)] if h <= w else [int(th * h / w), th]
    interpolation = InterpolationMode(cfg.get("interpolation", "bicubic"))
    x = TF.resize(images, new_hw, interpolation=interpolation, antialias=True).clamp(0.0, 1.0)
    if x.shape[-2:] != (th, tw):
        pad_h, pad_w = max(th - x.shape[-2], 0), max(tw - x.shape[-1], 0)
        if pad_h or pad_w:
            pads = [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]
            x = F.pad(x, pads, value=cfg.get("fill_color", 0) / 255.0)
        x = TF.center_crop(x, [th, tw])
    return (x - mean) / std


@register_scorer
class ClipTScorer(Scorer):
    """CLIP-T: cos(image embedding of the edited image, text embedding of `sample.target_prompt`)."""

    name = "clip_t"
    display = "CLIP-T"
    higher_is_better = True
    meaning = "more editable"
    Params = ClipTParams

    def __init__(self, params: ClipTParams | dict[str, Any] | None, device: torch.device) -> None:
        import open_clip

        super().__init__(params, device)
        p: ClipTParams = self.params
        tag_kwargs = open_clip_tag_kwargs(p.model, p.pretrained_tag)
        if p.weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = open_clip.create_model(p.model, pretrained=None, **tag_kwargs)
            self._source, tokenizer_name = f"{p.model}:random", p.model
        elif p.weights == "pretrained":
            checkpoint = resolve_pretrained_checkpoint(p.model, p.pretrained_tag)
            model = open_clip.create_model(p.model, pretrained=checkpoint, **tag_kwargs)
            self._source, tokenizer_name = f"{p.model}:{p.pretrained_tag}", p.model
        elif p.weights == "toy":
            model, _, tokenizer_name = load_local_clip(p.model, str(toy_clip_dir()), tag_kwargs)
            self._source = TOY_CLIP_SOURCE
        else:
            model, self._source, tokenizer_name = load_local_clip(p.model, p.weights, tag_kwargs)
        self.model = model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name)
        self.preprocess_cfg = open_clip.get_model_preprocess_cfg(self.model)
        self._mean = torch.tensor(self.preprocess_cfg["mean"], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess_cfg["std"], device=device).view(1, 3, 1, 1)
        self._text_cache: dict[str, torch.Tensor] = {}
        log.info("clip_t: %s on %s, preprocessing %s", self._source, device, self.preprocess_cfg)

    @property
    def weights_source(self) -> str:
        """'ViT-L-14:openai', 'ViT-L-14:random', 'ViT-L-14:/path/file', 'local-dir:/path' or 'toy:clip'."""
        return self._source

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's eval transform on a (N,3,H,W) [0,1] batch (see `clip_preprocess`)."""
        return clip_preprocess(images, self.preprocess_cfg, self._mean, self._std)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(prompts), d), each prompt encoded once per scorer."""
        new = sorted({q for q in prompts if q not in self._text_cache})
        if new:
            emb = self.model.encode_text(self.tokenizer(new).to(self.device), normalize=True).float()
            self._text_cache.update(zip(new, emb))
        return torch.stack([self._text_cache[q] for q in prompts])

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, d) of a (N,3,H,W) [0,1] batch."""
        x = self.preprocess(images.to(self.device, torch.float32))
        return self.model.encode_image(x, normalize=True).float()

    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """Raw cosine per image in [-1, 1] (multiply by 100 and clip at 0 for torchmetrics CLIPScore)."""
        image = self.image_embeddings(edited)
        text = self.text_embeddings([s.target_prompt for s in samples])
        return ScoreBatch(scores={"clip_t": (image * text).sum(dim=-1).clamp(-1.0, 1.0).cpu()})
