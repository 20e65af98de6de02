"""CLIP guidance for diffusion sampling (Blended Diffusion, Avrahami, Lischinski, Fried 2022, Sec. 3-4):
a differentiable CLIP loss between augmented views of an image and a text, and the guidance model's
loading.

The loss is the paper's D_CLIP: the spherical distance 2 * arcsin(|a - b| / 2)^2 between the
L2-normalised CLIP embeddings of the image and of the text, averaged over `n` views of the image:
the image average-pooled to CLIP's input size, and n - 1 random augmentations of it (the reference
code's `ImageAugmentations`: a random affine map, rotation up to 15 degrees and translation up to
10% of the side, then a random perspective map, corners moved inwards by up to 0.7 / 2 of the
side, each applied with probability 0.7, border padding). We build each view's sampling grid
ourselves, one batched `grid_sample` for every view of every image, instead of depending on kornia
(which the reference uses): the draws come from each image's own generator, so its views do not
depend on the batch around it. The maps' distributions are kornia's; the numbers drawn are not.

CLIP weights are open_clip's (`bench/metrics/clip_t.py` resolves and loads them): `pretrained`
(the tag's safetensors file from the HF cache, OpenAI's ViT-B/16 by default as in the paper), `toy`
(the toy CLIP shipped in toy/weights/clip, for the toy world), `tiny` (the toy CLIP's architecture
with seeded random weights, for fast offline tests), or a local open_clip folder or safetensors file.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CLIP_PRESETS = ("toy", "tiny")
TINY_SEED = 0


class GuidanceModelError(RuntimeError):
    """A guidance model (CLIP, LPIPS) cannot be loaded: the message names it and how to provide it."""


@dataclass(frozen=True)
class GuidanceClip:
    """An open_clip model frozen for guidance, with its input size and normalisation."""

    model: torch.nn.Module
    tokenizer: object
    size: int
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor
    source: str

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(prompts), d)."""
        device = self.mean.device
        return self.model.encode_text(self.tokenizer(list(prompts)).to(device), normalize=True).float()

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (N, d) of (N, 3, size, size) images in [0, 1]; differentiable."""
        return self.model.encode_image((images - self.mean) / self.std, normalize=True).float()


def clip_source(model: str, weights: str) -> str:
    """What rows record for the guidance CLIP: `toy:clip`, `tiny:random`, `ViT-B-16:openai` or the path."""
    if weights == "toy":
        return "toy:clip"
    if weights == "tiny":
        return "tiny:random"
    if weights == "pretrained":
        return f"{model}:openai"
    return weights


@functools.lru_cache(maxsize=2)
def load_guidance_clip(model: str, weights: str, device: str) -> GuidanceClip:
    """The guidance CLIP (see the module docstring for `weights`), frozen, loaded once per worker."""
    import open_clip

    from editsweep.bench.metrics.base import ScorerWeightsError
    from editsweep.bench.metrics.clip_t import load_local_clip, resolve_pretrained_checkpoint, toy_clip_dir

    tag = "openai"
    try:
        if weights in CLIP_PRESETS:
            folder = toy_clip_dir()
            config = json.loads((folder / "open_clip_config.json").read_text())
            if weights == "toy":
                network, _, tokenizer_name = load_local_clip(model, str(folder), {}, scorer="Blended Diffusion CLIP")
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(TINY_SEED)
                    network = open_clip.CLIP(**config["model_cfg"])
                tokenizer_name = f"local-dir:{folder}"
            size = int(config["model_cfg"]["vision_cfg"]["image_size"])
            mean, std = config["preprocess_cfg"]["mean"], config["preprocess_cfg"]["std"]
        else:
            if weights == "pretrained":
                path = resolve_pretrained_checkpoint(model, tag, scorer="Blended Diffusion's guidance CLIP")
            else:
                path = weights
            is_folder = path.startswith("local-dir:") or Path(path).expanduser().is_dir()
            if not is_folder and not path.endswith(".safetensors"):
                raise GuidanceModelError(
                    f"guidance CLIP weights {path!r} are not safetensors: give the open_clip safetensors file "
                    f"(`hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors` for "
                    f"{model}:{tag}) or an open_clip folder"
                )
            tag_cfg = open_clip.get_pretrained_cfg(model, tag)
            kwargs = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))} if tag_cfg else {}
            network, _, tokenizer_name = load_local_clip(model, path, kwargs, scorer="Blended Diffusion's CLIP")
            cfg = open_clip.get_model_preprocess_cfg(network)
            size = cfg["size"] if isinstance(cfg["size"], int) else int(cfg["size"][0])
            mean, std = cfg["mean"], cfg["std"]
    except ScorerWeightsError as exc:
        raise GuidanceModelError(
            f"{exc} (set the method's `clip_weights: toy|tiny|/path/to/open_clip folder or .safetensors`)"
        ) from exc
    network = network.to(device).eval().requires_grad_(False)
    return GuidanceClip(
        model=network,
        tokenizer=open_clip.get_tokenizer(tokenizer_name),
        size=size,
        mean=torch.tensor(mean, device=device).view(1, 3, 1, 1),
        std=torch.tensor(std, device=device).view(1, 3, 1, 1),
        source=clip_source(model, weights),
    )


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's D_CLIP between L2-normalised embeddings, row by row: 2 * arcsin(|a - b| / 2)^2."""
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def augmentation_grids(
    views: int, size: int, generators: Sequence[torch.Generator], device: torch.device, probability: float = 0.7
) -> torch.Tensor:
    """(B, views, size, size, 2) `grid_sample` grids: view 0 the identity, the others the reference's
    random affine (rotation <= 15 deg, translation <= 10%) then perspective (distortion 0.7) maps, each
    applied with `probability`; sample b's draws come from generators[b]."""
    axis = torch.linspace(-1, 1, size, dtype=torch.float64, device=device)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(-1, 3)
    identity = points[:, :2].view(1, 1, size, size, 2).expand(len(generators), 1, size, size, 2).float()
    if views == 1:
        return identity
    rows = []
    for g in generators:
        u = torch.rand(views - 1, 10, generator=g, device=g.device).to(device, torch.float64)
        affine_on, perspective_on = u[:, 0] < probability, u[:, 1] < probability
        angle = (u[:, 2] * 2 - 1) * math.radians(15) * affine_on
        shift = (u[:, 3:5] * 2 - 1) * 0.1 * 2 * affine_on[:, None]  # normalised coordinates span 2
        # Each corner moves inwards by up to distortion / 2 of the side (normalised: distortion).
        inward = u[:, 5:9].repeat_interleave(2, dim=1).view(-1, 4, 2) * 0.7 * perspective_on[:, None, None]
        rows.append((angle, shift, inward))
    angle = torch.cat([r[0] for r in rows])
    shift = torch.cat([r[1] for r in rows])
    inward = torch.cat([r[2] for r in rows])
    n = len(angle)
    corners = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64, device=device)
    moved = corners * (1 - inward)
    homography = _homographies(corners.expand(n, 4, 2), moved)
    cos, sin = angle.cos(), angle.sin()
    affine = torch.zeros(n, 3, 3, dtype=torch.float64, device=device)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = cos, -sin, sin, cos
    affine[:, :2, 2], affine[:, 2, 2] = shift, 1
    transform = affine @ homography  # output coordinates -> where the view samples the image
    mapped = torch.einsum("nij,pj->npi", transform, points)
    grid = (mapped[..., :2] / mapped[..., 2:]).view(len(generators), views - 1, size, size, 2)
    return torch.cat([identity, grid.float()], dim=1)


def _homographies(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) maps taking the 4 `source` points (N, 4, 2) to the 4 `target` points (DLT, h33 = 1)."""
    x, y = source.unbind(-1)
    u, v = target.unbind(-1)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    a = torch.cat(
        [
            torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1),
            torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1),
        ],
        dim=1,
    )
    h = torch.linalg.solve(a, torch.cat([u, v], dim=1))
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def clip_loss(
    clip: GuidanceClip, images: torch.Tensor, texts: torch.Tensor, grids: torch.Tensor
) -> torch.Tensor:
    """(N,) mean spherical distance over the views of each image (N, 3, H, W) in [0, 1] to its text
    embedding (N, d); `grids` (N, views, s, s, 2) from `augmentation_grids` (the reference pools to
    CLIP's size first, then augments)."""
    n, views = grids.shape[:2]
    pooled = F.adaptive_avg_pool2d(images, clip.size)
    repeated = pooled.repeat_interleave(views, dim=0)
    warped = F.grid_sample(repeated, grids.flatten(0, 1), mode="bilinear", padding_mode="border", align_corners=True)
    embeddings = clip.image_embeddings(warped)
    return spherical_distance(embeddings, texts.repeat_interleave(views, dim=0)).view(n, views).mean(1)


def range_loss(images: torch.Tensor) -> torch.Tensor:
    """(N,) the reference's range loss: mean squared excess of [-1, 1]-scaled pixels beyond [-1, 1]."""
    return (images - images.clamp(-1, 1)).pow(2).mean((1, 2, 3))
