"""CLIP-T: cosine similarity between the CLIP embeddings of the edited image and the target prompt.

The stored score "clip_t" is the raw cosine in [-1, 1]. torchmetrics `CLIPScore` (and PIE-Bench,
which uses it with `openai/clip-vit-large-patch14`) reports 100 * max(cos, 0) instead; the report
converts when it compares with those numbers.

Weights come from open_clip, resolved by core/clip_models.py ("pretrained": the tag's Hugging
Face hub file from the local cache, failing fast offline). open_clip is imported when a scorer is
built (importing it takes ~15 s on CPU and the registry is also imported where no scorer runs).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, register_scorer
from editsweep.core.clip_models import (
    TOY_CLIP_SOURCE,
    load_local_clip,
    open_clip_tag_kwargs,
    resolve_pretrained_checkpoint,
    toy_clip_dir,
)
from editsweep.datasets.base import Sample

log = logging.getLogger(__name__)

RANDOM_SEED = 0


class ClipTParams(ScorerParams):
    """open_clip architecture and pretrained tag; `weights` as in `ScorerParams`, or "toy": the toy
    CLIP trained on the toy world (`toy/train.py`), for runs on the `shapes` dataset.

    A `weights` path is either an open_clip checkpoint file for `model` (.safetensors/.bin/.pt),
    or a folder (optionally written "local-dir:/path") with `open_clip_config.json` and weights, in
    which case the folder's config defines the model and `model` is ignored.
    """

    model: str = "ViT-L-14"
    pretrained_tag: str = "openai"


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
