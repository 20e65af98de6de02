"""Structure distance (Splice, Tumanyan et al. 2022; PIE-Bench): DINO key self-similarity MSE.

For each image: the keys of the last transformer layer of DINO ViT-B/8 (every head, concatenated in
head order, CLS token included), their cosine self-similarity matrix (T x T, T = 1 + patches), and
the mean squared difference between the input's and the edit's matrices. 0 means the same
structure; lower is more faithful. The stored "structure_distance" is that raw MSE (PIE-Bench
reports it x10^3).

Preprocessing, as PIE-Bench's `LossG.global_transform`: torchvision `Resize(224, max_size=480)`
(short side 224, long side at most 480; bilinear) then ImageNet `Normalize`. Quirks kept:
- `pie_bench_quirk` (default on): PIE-Bench feeds 0-255 floats into that normalisation (Splice's
  own code feeds [0, 1] tensors); turn it off for Splice's definition.
- `antialias` (default off): PIE-Bench resized tensors with torchvision before 0.17, whose tensor
  resize did not antialias; newer torchvision does by default.

Weights: the original is torch hub `facebookresearch/dino:main` `dino_vitb8`. Here the same weights
load through transformers `ViTModel` from the Hub id `facebook/dino-vitb8` (the hub checkpoint
converted, q/k/v split out of DINO's fused `qkv`) or a local folder in that format. Two details
are set to match the torch hub model: LayerNorm eps 1e-6 (the Hub config says 1e-12) and
position-embedding interpolation on (the benchmark's square images map to 224x224 = the 28x28
training grid, where neither implementation interpolates; for non-square inputs transformers
interpolates to the target size while DINO passes a scale factor, a sub-pixel difference).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from editsweep.bench.metrics.base import ScoreBatch, Scorer, ScorerParams, ScorerWeightsError, register_scorer
from editsweep.core.hub import hf_cache_dir, hf_offline
from editsweep.datasets.base import Sample

log = logging.getLogger(__name__)

RANDOM_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_LAYER_NORM_EPS = 1e-6  # DINO's ViT uses nn.LayerNorm(eps=1e-6)
COSINE_EPS = 1e-8  # PIE-Bench's attn_cosine_sim clamps the product of norms at this value
# A tiny ViT for `weights: random`: same patch size as ViT-B/8, a few small layers.
TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 224,
    "qkv_bias": True,
}


class StructureParams(ScorerParams):
    """DINO model and PIE-Bench's preprocessing; `weights`: pretrained (Hub id `model`), random
    (tiny seeded ViT), or a local transformers ViT folder."""

    model: str = Field("facebook/dino-vitb8", description="Hub id of the DINO ViT (transformers format)")
    size: int = Field(224, ge=8, le=1024, description="short side after resizing (Resize(size))")
    max_size: int = Field(480, ge=8, le=4096, description="cap on the long side (Resize(max_size=...))")
    pie_bench_quirk: bool = Field(True, description="feed 0-255 floats into ImageNet normalisation, as PIE-Bench")
    antialias: bool = Field(False, description="antialiased resize (PIE-Bench's torchvision did not)")


def _load_vit(p: StructureParams) -> tuple[torch.nn.Module, str]:
    """(ViTModel, weights source) for `weights`: random, pretrained (Hub id) or a local folder."""
    from transformers import ViTConfig, ViTModel

    if p.weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            config = ViTConfig(**TINY_VIT, layer_norm_eps=DINO_LAYER_NORM_EPS)
            return ViTModel(config, add_pooling_layer=False), "tiny-vit:random"
    source = p.model if p.weights == "pretrained" else p.weights
    offline = p.weights == "pretrained" and hf_offline()
    try:
        model = ViTModel.from_pretrained(
            source, add_pooling_layer=False, layer_norm_eps=DINO_LAYER_NORM_EPS, local_files_only=offline
        )
    except (OSError, ValueError) as exc:
        if p.weights != "pretrained":
            raise ScorerWeightsError(
                f"structure distance: {source} is not a transformers ViT folder "
                f"(config.json + model.safetensors): {exc}"
            ) from exc
        reason = "HF_HUB_OFFLINE is set" if offline else f"download failed: {exc}"
        raise ScorerWeightsError(
            f"structure distance needs DINO ViT-B/8 weights {p.model} ({reason}); they are not in the HF cache "
            f"{hf_cache_dir()}. Provide them: on a connected machine run `hf download {p.model}` with the same "
            f"HF_HOME/HF_HUB_CACHE, or save the model to a folder and set the scorer's `weights: /path/to/folder`; "
            f"`weights: random` gives uncomparable scores for smoke tests."
        ) from exc
    return model, source


def cosine_self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, D) -> (N, T, T) cosines, the product of norms clamped at 1e-8 (PIE-Bench's attn_cosine_sim)."""
    norms = tokens.norm(dim=-1, keepdim=True)
    return (tokens @ tokens.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp(min=COSINE_EPS)


@register_scorer
class StructureDistanceScorer(Scorer):
    """MSE between the DINO key self-similarity matrices of each edit and its input; lower is closer."""

    name = "structure_distance"
    display = "Structure distance"
    higher_is_better = False
    meaning = "more faithful"
    scale = 1e3  # PIE-Bench's x10^3 (METRICS.md)
    Params = StructureParams

    def __init__(self, params: StructureParams | dict[str, Any] | None, device: torch.device) -> None:
        super().__init__(params, device)
        model, self._source = _load_vit(self.params)
        self.model = model.to(device).eval()
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        log.info("structure_distance: %s on %s", self._source, device)

    @property
    def weights_source(self) -> str:
        """'facebook/dino-vitb8', a local folder, or 'tiny-vit:random'."""
        return self._source

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) [0,1] -> resized (short side `size`, long side <= `max_size`), normalised."""
        from torchvision.transforms.v2 import functional as TF

        p: StructureParams = self.params
        x = images.to(self.device, torch.float32) * (255.0 if p.pie_bench_quirk else 1.0)
        x = TF.resize(x, [p.size], max_size=p.max_size, antialias=p.antialias)
        return (x - self._mean) / self._std

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """Last layer's attention keys (N, T, D) of a (N,3,H,W) [0,1] batch, heads concatenated, CLS first.

        Read with a hook on the last layer's key projection: its (N, T, heads * head_dim) output,
        before the split into heads, is the heads concatenated in order, which is what PIE-Bench's
        reshape of DINO's fused qkv output gives.
        """
        captured: list[torch.Tensor] = []
        hook = self.model.layers[-1].attention.k_proj.register_forward_hook(lambda m, i, out: captured.append(out))
        try:
            self.model(pixel_values=self.preprocess(images), interpolate_pos_encoding=True)
        finally:
            hook.remove()
        return captured[0].float()

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """MSE over the T x T entries of the two self-similarity matrices, per image."""
        if edited.shape != sources.shape:
            raise ValueError(
                f"structure distance needs edits and inputs of one shape, got {edited.shape} and {sources.shape}"
            )
        n = edited.shape[0]
        sims = cosine_self_similarity(self.keys(torch.cat([edited, sources])))
        distance = F.mse_loss(sims[:n], sims[n:], reduction="none").flatten(1).mean(dim=1)
        return ScoreBatch(scores={"structure_distance": distance.cpu()})
