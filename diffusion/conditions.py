"""Condition extractors for ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models"): named functions from input images to the condition image a ControlNet takes.

An extractor is a registered class with a `name` and `extract(images, params)`: images (B, H, W, 3)
uint8 RGB arrays in, a (B, 3, H, W) float tensor in [0, 1] out (ControlNet's condition images: the
map repeated on three channels, as the reference code's `HWC3`). Built in:

- `canny`: Canny edges (Canny 1986) with ControlNet's thresholds 100 / 200 on the 8-bit image, as
  the reference annotator (`annotator/canny`, `cv2.Canny(img, low, high)` on the RGB image);
- `gray`: the image's luminance (ITU-R BT.601, PIL's `convert("L")`), for recolouring ControlNets;
- `image`: the input image itself, for ControlNets conditioned on the image (tile, shuffle inputs).

Depth, segmentation and the other annotators need models of their own and are not built in; a spec
can register one from a plugin file (`imports:`) with `register_condition`, the way methods register.
It receives the method's parameters (`ConditionParams` or a subclass: methods/controlnet.py,
methods/t2i_adapter.py) and reads what it needs from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from scipy import ndimage

from editsweep.core.params import Params
from editsweep.core.registry import Registry
from editsweep.datasets.base import Sample

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


CONDITIONS: Registry[type[Condition]] = Registry("condition")
register_condition = CONDITIONS.register


class ConditionParams(Params):
    """Which extractor makes the condition image, and its settings (the invert params of the
    condition-guided methods, which subclass it to add their model)."""

    condition: str = Field("canny", description="condition extractor: canny, gray, image, or one from a plugin")
    low_threshold: float = Field(100.0, ge=0, le=1020, description="canny: candidate edge gradient (L1, 8-bit)")
    high_threshold: float = Field(200.0, ge=0, le=1020, description="canny: strong edge gradient (L1, 8-bit)")

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
