"""Condition extractors for ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models") and T2I-Adapter (Mou et al. 2024): named functions from input images to the
condition image such a model takes.

An extractor is a registered class with a `name` and `extract(images, params)`: images (B, H, W, 3)
uint8 RGB arrays in, a (B, 3, H, W) float tensor in [0, 1] out (ControlNet's condition images: the
map repeated on three channels, as the reference code's `HWC3`). Built in:

- `canny`: Canny edges (Canny 1986) with ControlNet's thresholds 100 / 200 on the 8-bit image, as
  the reference annotator (`annotator/canny`, `cv2.Canny(img, low, high)` on the RGB image);
- `gray`: the image's luminance (ITU-R BT.601, PIL's `convert("L")`), for recolouring ControlNets;
- `image`: the input image itself, for ControlNets conditioned on the image (tile, shuffle inputs);
- `depth`: relative inverse depth by DPT (Ranftl et al. 2021, "Vision Transformers for Dense
  Prediction"; transformers' `DPTForDepthEstimation`, default `Intel/dpt-hybrid-midas`, the MiDaS
  model of diffusers' ControlNet depth docs), resized to the image (bicubic) and scaled to [0, 1] per
  image by its min and max, as those docs do;
- `segmentation`: ADE20K classes by UperNet (Xiao et al. 2018; transformers'
  `UperNetForSemanticSegmentation`, default `openmmlab/upernet-convnext-small`, as ControlNet's
  segmentation docs) at the image's size (bilinear logits, argmax), painted with the ADE20K palette
  (diffusion/ade20k.py) that ControlNet's segmentation annotator uses.

Both models come from a Hub id or local folder (safetensors only, with the image processor's config),
or the offline preset `tiny` (a seeded random model of ~0.1 M parameters reading 32 px, for tests);
each is loaded once per worker and runs on the worker's GPU when it has one. Other annotators need
models of their own; a spec can register one from a plugin file (`imports:`) with
`register_condition`, the way methods register. An extractor receives the method's parameters (`ConditionParams` or a subclass: methods/controlnet.py,
methods/t2i_adapter.py) and reads what it needs from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from scipy import ndimage

from editsweep.core.hub import load_cache_first
from editsweep.core.params import Params
from editsweep.core.registry import Registry
from editsweep.datasets.base import Sample
from editsweep.diffusion.ade20k import ADE20K_PALETTE

PRESETS = ("tiny",)
DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"
DEFAULT_SEGMENTATION_MODEL = "openmmlab/upernet-convnext-small"

# cv2.Canny's sector bounds: tan(22.5 deg) and tan(67.5 deg).
_TAN_22_5 = np.tan(np.pi / 8)
_TAN_67_5 = np.tan(3 * np.pi / 8)


class Condition:
    """A named condition extractor (module docstring)."""

    name: ClassVar[str]

    @classmethod
    def extract(cls, images: np.ndarray, params: Any) -> torch.Tensor:
        """The condition images (B, 3, H, W) in [0, 1] of uint8 RGB images (B, H, W, 3)."""
        raise NotImplementedError

    @classmethod
    def model_source(cls, params: Any) -> str | None:
        """The extractor's own model as a row's `weights` records it (`tiny:random`), or None."""
        return None


CONDITIONS: Registry[type[Condition]] = Registry("condition")
register_condition = CONDITIONS.register


class ConditionParams(Params):
    """Which extractor makes the condition image, and its settings (the invert params of the
    condition-guided methods, which subclass it to add their model)."""

    condition: str = Field(
        "canny", description="condition extractor: canny, gray, image, depth, segmentation, or one from a plugin"
    )
    low_threshold: float = Field(100.0, ge=0, le=1020, description="canny: candidate edge gradient (L1, 8-bit)")
    high_threshold: float = Field(200.0, ge=0, le=1020, description="canny: strong edge gradient (L1, 8-bit)")
    depth_model: str = Field(
        DEFAULT_DEPTH_MODEL, description="depth: DPT weights (Hub id, local folder, or 'tiny': random, offline)"
    )
    segmentation_model: str = Field(
        DEFAULT_SEGMENTATION_MODEL,
        description="segmentation: ADE20K UperNet weights (Hub id, local folder, or 'tiny': random, offline)",
    )

    @field_validator("condition")
    @classmethod
    def _known_condition(cls, value: str) -> str:
        if value not in CONDITIONS:
            raise ValueError(f"unknown condition {value!r}; known conditions: {', '.join(sorted(CONDITIONS))}")
        return value

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> ConditionParams:
        if self.low_threshold > self.high_threshold:
            raise ValueError(f"low_threshold {self.low_threshold} is above high_threshold {self.high_threshold}")
        return self


def extract_condition(samples: Sequence[Sample], params: ConditionParams) -> torch.Tensor:
    """The condition images (B, 3, H, W) in [0, 1] of the samples' 8-bit RGB images."""
    images = np.stack([np.asarray(s.image.convert("RGB")) for s in samples])
    return CONDITIONS[params.condition].extract(images, params)


def condition_sources(params: ConditionParams) -> dict[str, str]:
    """The condition extractor's model, if it has one, for the method's `model_sources`."""
    source = CONDITIONS[params.condition].model_source(params)
    return {} if source is None else {params.condition: source}


def _three_channels(maps: np.ndarray) -> torch.Tensor:
    """(B, H, W) maps in [0, 1] as (B, 3, H, W) float32 tensors."""
    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None].repeat(1, 3, 1, 1)


def canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges of one uint8 image (H, W) or (H, W, C) as a bool (H, W) map, as `cv2.Canny(image,
    low, high)` with its defaults (3x3 Sobel, L1 gradient norm, replicated borders; on several
    channels, each pixel takes the channel of largest gradient).

    Written here on scipy because neither OpenCV nor scikit-image is a dependency (the reference
    annotator is OpenCV's; scikit-image's Canny smooths first and uses other thresholds' units):
    gradient, cv2's three-sector non-maximum suppression (strict on one side, as cv2) and hysteresis
    as 8-connected components of candidates that contain a strong pixel. Candidates exceed `low`,
    strong pixels `high` (cv2 swaps them when low > high).
    """
    low, high = min(low, high), max(low, high)
    x = image.astype(np.float64)
    x = x[..., None] if x.ndim == 2 else x
    # Sobel per channel (ndimage.sobel would also smooth across the channel axis)
    def sobel(axis: int) -> np.ndarray:
        derivative = ndimage.correlate1d(x, [-1, 0, 1], axis=axis, mode="nearest")
        return ndimage.correlate1d(derivative, [1, 2, 1], axis=1 - axis, mode="nearest")

    dx, dy = sobel(1), sobel(0)
    magnitude = np.abs(dx) + np.abs(dy)
    channel = magnitude.argmax(axis=2)[..., None]
    dx, dy = np.take_along_axis(dx, channel, 2)[..., 0], np.take_along_axis(dy, channel, 2)[..., 0]
    m = np.take_along_axis(magnitude, channel, 2)[..., 0]
    padded = np.pad(m, 1)  # cv2 compares border pixels with zeros outside the image

    def neighbour(di: np.ndarray | int, dj: np.ndarray | int) -> np.ndarray:
        rows, cols = np.indices(m.shape)
        return padded[rows + 1 + di, cols + 1 + dj]

    ax, ay = np.abs(dx), np.abs(dy)
    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    s = np.where(dx * dy < 0, -1, 1)
    maximum = np.where(
        horizontal,
        (m > neighbour(0, -1)) & (m >= neighbour(0, 1)),
        np.where(
            vertical,
            (m > neighbour(-1, 0)) & (m >= neighbour(1, 0)),
            (m > neighbour(-1, -s)) & (m > neighbour(1, s)),
        ),
    )
    candidates = maximum & (m > low)
    labels, _ = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    strong = np.unique(labels[candidates & (m > high)])
    return np.isin(labels, strong[strong > 0])


@register_condition
class Canny(Condition):
    """Canny edges with the params' `low_threshold` / `high_threshold` (ControlNet's 100 / 200)."""

    name = "canny"

    @classmethod
    def extract(cls, images: np.ndarray, params: Any) -> torch.Tensor:
        return _three_channels(np.stack([canny(im, params.low_threshold, params.high_threshold) for im in images]))


@register_condition
class Gray(Condition):
    """Luminance (ITU-R BT.601) in PIL's fixed point, so equal to `convert("L")`."""

    name = "gray"

    @classmethod
    def extract(cls, images: np.ndarray, params: Any) -> torch.Tensor:
        weights = np.array([19595, 38470, 7471], dtype=np.int64)  # 0.299, 0.587, 0.114 in 16-bit fixed point
        luminance = (images.astype(np.int64) @ weights + 0x8000) >> 16
        return _three_channels(luminance / 255.0)


@register_condition
class InputImage(Condition):
    """The input image itself."""

    name = "image"

    @classmethod
    def extract(cls, images: np.ndarray, params: Any) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


class ExtractorLoadError(RuntimeError):
    """A condition extractor's model cannot be loaded; the message says which and how to fix it."""


_MODELS: dict[tuple[str, str], tuple[Any, torch.nn.Module]] = {}


def _device() -> torch.device:
    """The worker's GPU when it has one (Ray hands each GPU worker its own as cuda:0), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_extractor(kind: str, name: str) -> tuple[Any, torch.nn.Module]:
    """The image processor and model of a `depth` or `segmentation` extractor (`tiny`, a Hub id or a
    local folder), float32, in eval mode on `_device()`; cached per worker, the last two kept."""
    key = (kind, name)
    if key not in _MODELS:
        processor, model = _build_tiny(kind) if name in PRESETS else _load_pretrained(kind, name)
        model.requires_grad_(False).eval().to(_device(), torch.float32)
        while len(_MODELS) >= 2:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = (processor, model)
    return _MODELS[key]


def _build_tiny(kind: str, seed: int = 0) -> tuple[Any, torch.nn.Module]:
    """A seeded random DPT (0.12 M parameters) or UperNet (0.06 M) with a 32 px processor (tests)."""
    from transformers import (
        ConvNextConfig,
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessor,
        SegformerImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    size = {"height": 32, "width": 32}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "depth":
            config = DPTConfig(
                hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=32,
                patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 16, 32, 32],
                fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5],
            )
            return DPTImageProcessor(size=size), DPTForDepthEstimation(config)
        backbone = ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
        )
        config = UperNetConfig(
            backbone_config=backbone, hidden_size=16, num_labels=len(ADE20K_PALETTE), use_auxiliary_head=False
        )
        return SegformerImageProcessor(size=size), UperNetForSemanticSegmentation(config)


def _load_pretrained(kind: str, source: str) -> tuple[Any, torch.nn.Module]:
    """The processor and model from `source` (local folder or Hub id), safetensors only, cache first."""
    from transformers import AutoImageProcessor, DPTForDepthEstimation, UperNetForSemanticSegmentation

    model_class = DPTForDepthEstimation if kind == "depth" else UperNetForSemanticSegmentation

    def load(src: str, local_only: bool) -> tuple[Any, torch.nn.Module]:
        processor = AutoImageProcessor.from_pretrained(src, local_files_only=local_only)
        return processor, model_class.from_pretrained(src, use_safetensors=True, local_files_only=local_only)

    def missing(is_folder: bool) -> str:
        what = f"the {kind} model {source!r} ({model_class.__name__})"
        if is_folder:
            return (
                f"cannot load {what} from the folder: it needs config.json, model.safetensors and "
                "preprocessor_config.json (`save_pretrained` of the model and its image processor)"
            )
        return (
            f"{what} is not in the local Hugging Face cache and cannot be downloaded here. Download it where "
            f"there is a network (`huggingface-cli download {source}`), or give a local folder with config.json, "
            f"model.safetensors and preprocessor_config.json, or use the offline preset {', '.join(PRESETS)} "
            f"(`{kind}_model: tiny`, random weights)"
        )

    return load_cache_first(source, load, missing, ExtractorLoadError)


def _model_source(name: str) -> str:
    return f"{name}:random" if name in PRESETS else name


@register_condition
class Depth(Condition):
    """DPT relative depth (near is bright), min-max scaled to [0, 1] per image (module docstring)."""

    name = "depth"

    @classmethod
    def extract(cls, images: np.ndarray, params: Any) -> torch.Tensor:
        processor, model = load_extractor("depth", params.depth_model)
        pixels = processor(images=list(images), return_tensors="pt").pixel_values.to(_device())
        with torch.no_grad():
            depth = model(pixel_values=pixels).predicted_depth[:, None].float()
        depth = torch.nn.functional.interpolate(depth, size=images.shape[1:3], mode="bicubic", align_corners=False)
        low, high = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
        depth = ((depth - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
        return depth.repeat(1, 3, 1, 1).cpu()

    @classmethod
    def model_source(cls, params: Any) -> str | None:
        return _model_source(params.depth_model)


@register_condition
class Segmentation(Condition):
    """ADE20K classes by UperNet, painted with the ADE20K palette (module docstring)."""

    name = "segmentation"

    @classmethod
    def extract(cls, images: np.ndarray, params: Any) -> torch.Tensor:
        processor, model = load_extractor("segmentation", params.segmentation_model)
        pixels = processor(images=list(images), return_tensors="pt").pixel_values.to(_device())
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits.float()
        if logits.shape[1] != len(ADE20K_PALETTE):
            raise ValueError(
                f"segmentation model {params.segmentation_model!r} has {logits.shape[1]} classes, the ADE20K "
                f"palette {len(ADE20K_PALETTE)}: use an ADE20K-trained segmenter (e.g. {DEFAULT_SEGMENTATION_MODEL})"
            )
        logits = torch.nn.functional.interpolate(logits, size=images.shape[1:3], mode="bilinear", align_corners=False)
        palette = torch.tensor(ADE20K_PALETTE, dtype=torch.float32, device=logits.device) / 255.0
        return palette[logits.argmax(dim=1)].permute(0, 3, 1, 2).contiguous().cpu()

    @classmethod
    def model_source(cls, params: Any) -> str | None:
        return _model_source(params.segmentation_model)
