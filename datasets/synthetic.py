"""A procedurally generated dataset: one coloured shape on a smooth gradient, one attribute edited.

Offline and deterministic, so sweeps, tests and CI run without downloading anything. Each sample
is drawn from its own RNG seeded with (seed, index): a sample does not depend on `n`, and the same
parameters give byte-identical images.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydantic import Field

from editsweep.datasets.base import Dataset, DatasetError, DatasetParams, Sample, register_dataset

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (240, 200, 30),
    "purple": (130, 60, 180),
    "orange": (250, 127, 14),
}
SHAPES = ("circle", "square", "triangle")
EDIT_TYPES = ("color", "shape")
# Shapes are drawn at this multiple of the output size and box-downsampled: anti-aliased edges.
SUPERSAMPLE = 4
_ID = re.compile(r"syn-(\d{4})")


class SyntheticParams(DatasetParams):
    """How many samples, at which square size, from which seed."""

    n: int = Field(8, ge=1, le=10000)
    size: int = Field(64, ge=16, le=1024)
    # Non-negative because numpy's SeedSequence only takes non-negative entropy.
    seed: int = Field(0, ge=0)


@register_dataset
class SyntheticDataset(Dataset):
    """Coloured circles, squares and triangles whose colour or shape the target prompt changes."""

    name = "synthetic"
    Params = SyntheticParams
    params: SyntheticParams

    def sample_ids(self) -> list[str]:
        """`syn-0000` to `syn-{n-1:04d}`."""
        return [f"syn-{i:04d}" for i in range(self.params.n)]

    def load(self, sample_id: str) -> Sample:
        """Render sample `sample_id`; its prompts differ in one word, recorded in `meta`."""
        match = _ID.fullmatch(sample_id)
        if match is None or int(match.group(1)) >= self.params.n:
            last = f"syn-{self.params.n - 1:04d}"
            raise DatasetError(f"unknown synthetic sample id {sample_id!r} (ids are syn-0000 to {last})")
        image, meta = render(int(match.group(1)), self.params.size, self.params.seed)
        source, target = meta["source"], meta["target"]
        return Sample(
            id=sample_id,
            image=image,
            source_prompt=_prompt(source["color"], source["shape"]),
            target_prompt=_prompt(target["color"], target["shape"]),
            meta=meta,
        )


def render(index: int, size: int, seed: int) -> tuple[Image.Image, dict[str, Any]]:
    """Draw sample `index`: an RGB `size` x `size` image and its edit description.

    The description is `{"edit_type", "blended_words": [source word, target word], "source": {color,
    shape}, "target": {color, shape}, "bbox": [x0, y0, x1, y1]}`, the box being the shape's extent in
    pixels (ground truth for the region an edit may change).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    # Only rng.random() is used: numpy keeps the bit stream stable across versions, while the
    # algorithms behind integers()/choice() may change, which would change the images.
    uniform = rng.random

    def pick(options: tuple[str, ...]) -> str:
        return options[int(uniform() * len(options))]

    low, high = np.array([uniform() for _ in range(3)]), np.array([uniform() for _ in range(3)])
    angle = 2 * math.pi * uniform()
    color, shape = pick(tuple(COLORS)), pick(SHAPES)
    extent = size * (0.35 + 0.25 * uniform())
    margin = 0.05 * size  # keeps the shape off the border, where edits and crops behave differently
    cx = margin + extent / 2 + (size - extent - 2 * margin) * uniform()
    cy = margin + extent / 2 + (size - extent - 2 * margin) * uniform()
    edit_type = pick(EDIT_TYPES)
    if edit_type == "color":
        target = {"color": pick(tuple(c for c in COLORS if c != color)), "shape": shape}
        words = [color, target["color"]]
    else:
        target = {"color": color, "shape": pick(tuple(s for s in SHAPES if s != shape))}
        words = [shape, target["shape"]]

    background = _gradient(size, angle, 150 + 100 * low, 150 + 100 * high)
    box = (cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)
    mask = _shape_mask(shape, size, box)
    image = Image.composite(Image.new("RGB", (size, size), COLORS[color]), background, mask)
    meta = {
        "edit_type": edit_type,
        "blended_words": words,
        "source": {"color": color, "shape": shape},
        "target": target,
        "bbox": [math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])],
    }
    return image, meta


def _gradient(size: int, angle: float, start: np.ndarray, end: np.ndarray) -> Image.Image:
    """A linear gradient from colour `start` to `end` along direction `angle` (light colours)."""
    coords = np.arange(size, dtype=np.float64) + 0.5
    projection = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]
    t = (projection - projection.min()) / (projection.max() - projection.min())
    pixels = start[None, None, :] * (1 - t[..., None]) + end[None, None, :] * t[..., None]
    return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")


def _shape_mask(shape: str, size: int, box: tuple[float, float, float, float]) -> Image.Image:
    """An anti-aliased "L" mask of `shape` filling `box` (an upward triangle for "triangle")."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in box)
    draw = ImageDraw.Draw(big)
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    return big.reduce(SUPERSAMPLE)


def _prompt(color: str, shape: str) -> str:
    article = "an" if color[0] in "aeiou" else "a"
    return f"a photo of {article} {color} {shape}"
