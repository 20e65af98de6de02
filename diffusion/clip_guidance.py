"""CLIP as a differentiable loss for the methods that train or guide with it (Text2Live,
DiffusionCLIP, Blended Diffusion).

The model loads through the project's CLIP loading (`core/clip_models.py`, as the CLIP scorers): an open_clip
architecture with a pretrained tag from the Hugging Face cache (failing fast offline, naming the
file and how to fetch it), an open_clip Hub repo (`hf-hub:org/name`) or local folder
(`open_clip_config.json` + `open_clip_model.safetensors`), the toy CLIP shipped in
`toy/weights/clip` (`toy`), or `random`: seeded random weights of the toy CLIP's small
architecture, for fast offline tests. Method weights load from safetensors only. `ClipParams` is
the base of a method's parameters that names its CLIP, checked when the spec is validated.

`ClipGuide` keeps the preprocessing differentiable (resize and normalise on the tensor), so a loss
on `image_embeddings` back-propagates to the pixels. Losses:
- `cosine_distance`: 1 - cos(image, text) (Text2Live's D_cos, Bar-Tal et al. 2022, Sec. 3.1);
- `directional_distance`: 1 - cos(E_I(edit) - E_I(source), E_T(target) - E_T(source)), the
  directional CLIP loss of StyleGAN-NADA that DiffusionCLIP (Kim et al. 2022, Eq. 6) and
  Text2Live's composition loss use;
- `clip_loss`: Blended Diffusion's D_CLIP (Avrahami, Lischinski, Fried 2022, Sec. 3-4), the
  spherical distance 2 * arcsin(|a - b| / 2)^2 between the normalised embeddings of the text and
  of `n` views of the image: the image average-pooled to CLIP's input size and n - 1 random
  augmentations of it (the reference code's `ImageAugmentations`: a random affine map, rotation up
  to 15 degrees and translation up to 10% of the side, then a random perspective map, corners moved
  inwards by up to 0.7 / 2 of the side, each with probability 0.7, border padding). Each view's
  sampling grid is built here, one batched `grid_sample` for every view of every image, instead of
  depending on kornia (which the reference uses): the draws come from each image's own generator,
  so its views do not depend on the batch around it. The maps' distributions are kornia's; the
  numbers drawn are not. `range_loss` is its loss on pixels beyond [-1, 1].
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from editsweep.core.hub import WeightsError, hf_cache_dir, hf_offline
from editsweep.core.params import Params

CLIP_PRESETS = ("toy", "random")
_HUB = "hf-hub:"
_LOCAL = "local-dir:"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_FOLDER_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
RANDOM_SEED = 0
_CACHE_SIZE = 2
_cache: OrderedDict[tuple[str, str, str], ClipGuide] = OrderedDict()
_lock = threading.Lock()


class ClipGuideError(RuntimeError):
    """The CLIP model a method asked for cannot be loaded: the message names it and how to fix it."""


@dataclass
class ClipGuide:
    """A frozen open_clip model with differentiable image preprocessing and cached text embeddings."""

    model: torch.nn.Module
    tokenizer: Any
    preprocess_cfg: dict[str, Any]
    source: str
    device: torch.device
    _text: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """The side of the (square) images the vision tower takes."""
        size = self.preprocess_cfg["size"]
        return int(size if isinstance(size, int) else size[0])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> the vision tower's input: bicubic resize to its size, normalised.

        Unlike the scorer's eval transform (resize, centre crop, clamp), this keeps gradients: the
        methods give square images and their own crops."""
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.preprocess_cfg["mean"], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess_cfg["std"], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, d) of (N, 3, H, W) [0, 1] images, differentiable."""
        return F.normalize(self.model.encode_image(self.preprocess(images.float())).float(), dim=-1)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The vision tower's output patch tokens (N, P, width), differentiable (Text2Live's structure loss)."""
        visual = self.model.visual
        was, visual.output_tokens = visual.output_tokens, True
        try:
            _, tokens = visual(self.preprocess(images.float()))
        finally:
            visual.output_tokens = was
        return tokens.float()

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(prompts), d), each prompt encoded once."""
        new = sorted({p for p in prompts if p not in self._text})
        if new:
            emb = self.model.encode_text(self.tokenizer(new).to(self.device)).float()
            self._text.update(zip(new, F.normalize(emb, dim=-1)))
        return torch.stack([self._text[p] for p in prompts])


def cosine_distance(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """1 - cos per row of normalised embeddings (N, d) -> (N,)."""
    return 1 - (image * text).sum(-1)


def directional_distance(
    edit: torch.Tensor, source: torch.Tensor, target_text: torch.Tensor, source_text: torch.Tensor
) -> torch.Tensor:
    """1 - cos(edit - source, target_text - source_text) per row (N,); a zero direction gives 1."""
    return 1 - F.cosine_similarity(edit - source, target_text - source_text, dim=-1, eps=1e-8)


class ClipParams(Params):
    """The CLIP of a method's losses, checked when the spec is validated (recorded in `weights`).

    `clip`: an open_clip architecture name (weights of `clip_tag` from the HF cache), `hf-hub:org/name`
    (an open_clip repo with open_clip_config.json + open_clip_model.safetensors), an absolute path to
    such a folder, `toy` (the shipped toy CLIP) or `random` (seeded random weights, toy-sized)."""

    clip: str = Field("ViT-B-32", description="open_clip name, hf-hub:org/name, absolute folder, toy or random")
    clip_tag: str = Field("openai", description="open_clip pretrained tag of an architecture name in `clip`")

    @model_validator(mode="after")
    def _known_clip(self) -> ClipParams:
        problem = clip_problem(self.clip, self.clip_tag)
        if problem:
            raise ValueError(problem)
        return self


def clip_problem(clip: str, tag: str) -> str | None:
    """Why `clip` / `tag` cannot name a CLIP model, or None (no file is read)."""
    if clip in CLIP_PRESETS or (clip.startswith(_HUB) and _REPO_ID.fullmatch(clip.removeprefix(_HUB))):
        return None
    if _is_local(clip):
        path = clip.removeprefix(_LOCAL)
        if not Path(path).expanduser().is_absolute():
            return f"clip {clip!r}: give a local open_clip folder as an absolute path"
        return None
    import open_clip

    if clip not in open_clip.list_models():
        return (
            f"unknown clip {clip!r}: use an open_clip architecture name (e.g. ViT-B-32, ViT-B-16), "
            f"hf-hub:org/name, an absolute open_clip folder, or one of {', '.join(CLIP_PRESETS)}"
        )
    tags = open_clip.list_pretrained_tags_by_model(clip)
    if tag not in tags:
        return f"clip_tag {tag!r} is not a pretrained tag of {clip} (known: {', '.join(tags) or 'none'})"
    return None


def clip_source(clip: str, tag: str) -> str:
    """What rows record for a CLIP choice (`random` marks random weights, as every weights source)."""
    if clip == "toy":
        return "toy:clip"
    if clip == "random":
        return "tiny-clip:random"
    if _is_local(clip):
        return f"{_LOCAL}{clip.removeprefix(_LOCAL)}"
    if clip.startswith(_HUB):
        return clip
    return f"{clip}:{tag}"


def _is_local(clip: str) -> bool:
    return clip.startswith(("/", "./", "~", _LOCAL))


def load_clip_guide(clip: str, tag: str, device: torch.device, who: str) -> ClipGuide:
    """The CLIP model `clip` (see `ClipParams`), frozen in eval mode on `device`; kept per process
    for the next groups (the last two asked for).

    `who` names the method in error messages. Raises `ClipGuideError` when the weights are missing
    (offline: at once) or are not safetensors."""
    key = (clip, tag, str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    guide = _load(clip, tag, device, who)
    with _lock:
        _cache[key] = guide
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return guide


def _hub_folder(repo_id: str, who: str) -> Path:
    """The local snapshot of an open_clip Hub repo's config and safetensors weights (downloaded unless offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=list(_FOLDER_FILES), cache_dir=hf_cache_dir(), local_files_only=hf_offline()
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ClipGuideError(
            f"{who}: CLIP hf-hub:{repo_id} is not in the HF cache {hf_cache_dir()} and cannot be downloaded ({exc}); "
            f"on a connected machine run `hf download {repo_id} {' '.join(_FOLDER_FILES)}` with the same "
            "HF_HOME/HF_HUB_CACHE, or copy both files into a folder and set `clip:` to its absolute path"
        ) from exc


def _load(clip: str, tag: str, device: torch.device, who: str) -> ClipGuide:
    import open_clip

    from open_clip.model import set_model_preprocess_cfg

    from editsweep.core.clip_models import (
        load_local_clip,
        open_clip_tag_kwargs,
        resolve_pretrained_checkpoint,
        toy_clip_dir,
    )

    folder = None
    if clip in CLIP_PRESETS:
        folder = toy_clip_dir()
    elif _is_local(clip):
        folder = Path(clip.removeprefix(_LOCAL)).expanduser()
    elif clip.startswith(_HUB):
        folder = _hub_folder(clip.removeprefix(_HUB), who)
    try:
        if clip == "random":
            config = json.loads((folder / "open_clip_config.json").read_text())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = open_clip.CLIP(**config["model_cfg"])
            size = config["model_cfg"]["vision_cfg"]["image_size"]
            set_model_preprocess_cfg(model, {**config["preprocess_cfg"], "size": size})
            tokenizer_name = f"local-dir:{folder}"
        elif folder is not None:
            missing = [name for name in _FOLDER_FILES if not (folder / name).is_file()]
            if missing:
                raise ClipGuideError(
                    f"{who}: CLIP folder {folder} has no {' or '.join(missing)} (method weights load from "
                    "safetensors only: an open_clip folder holds open_clip_config.json + open_clip_model.safetensors)"
                )
            model, _, tokenizer_name = load_local_clip("", str(folder), {}, scorer=f"{who} (CLIP)")
        else:
            problem = clip_problem(clip, tag)
            if problem:
                raise ClipGuideError(f"{who}: {problem}")
            checkpoint = resolve_pretrained_checkpoint(clip, tag, scorer=f"{who} (CLIP)")
            if not checkpoint.endswith(".safetensors"):
                raise ClipGuideError(
                    f"{who}: CLIP {clip}:{tag} resolved to {checkpoint}, not a .safetensors file: method weights "
                    "load from safetensors only (fetch the repo's open_clip_model.safetensors)"
                )
            model = open_clip.create_model(clip, pretrained=checkpoint, **open_clip_tag_kwargs(clip, tag))
            tokenizer_name = clip
    except WeightsError as exc:
        raise ClipGuideError(str(exc)) from exc
    model = model.to(device).eval().requires_grad_(False)
    return ClipGuide(
        model=model,
        tokenizer=open_clip.get_tokenizer(tokenizer_name),
        preprocess_cfg=open_clip.get_model_preprocess_cfg(model),
        source=clip_source(clip, tag),
        device=device,
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
    clip: ClipGuide, images: torch.Tensor, texts: torch.Tensor, grids: torch.Tensor
) -> torch.Tensor:
    """(N,) mean spherical distance over the views of each image (N, 3, H, W) in [0, 1] to its text
    embedding (N, d); `grids` (N, views, s, s, 2) from `augmentation_grids` (the reference pools to
    CLIP's size first, then augments)."""
    n, views = grids.shape[:2]
    pooled = F.adaptive_avg_pool2d(images, clip.image_size)
    repeated = pooled.repeat_interleave(views, dim=0)
    warped = F.grid_sample(repeated, grids.flatten(0, 1), mode="bilinear", padding_mode="border", align_corners=True)
    embeddings = clip.image_embeddings(warped)
    return spherical_distance(embeddings, texts.repeat_interleave(views, dim=0)).view(n, views).mean(1)


def range_loss(images: torch.Tensor) -> torch.Tensor:
    """(N,) the reference's range loss: mean squared excess of [-1, 1]-scaled pixels beyond [-1, 1]."""
    return (images - images.clamp(-1, 1)).pow(2).mean((1, 2, 3))
