"""A deterministic pixel detector for the toy world (`toy/world.py`), independent of any learned model.

It reads back what a scene says: each object's colour, shape, size and position, and the
background's colour(s). The `shapes_truth` scorer (`bench/metrics/shapes_truth.py`) uses it to
check that an edit reached its target attribute, and the toy models' acceptance checks use it to
judge generated images.

How it works (the world's own facts make each step exact on a clean render):
- the background is flat or a linear gradient, so each channel is a plane in (x, y): it is fitted
  by least squares on the pixels far from any saturated pixel (object colours are saturated,
  background colours are not: chroma, max - min of RGB, is at least 135 for every object colour
  and at most 56 for every background and gradient between two);
- every pixel is a mix `alpha * colour + (1 - alpha) * background` (anti-aliasing, or the blur of
  a VAE round trip): for each object colour the best alpha and the residual of that mix are solved
  per pixel, and a pixel belongs to the colour that explains it best, if its alpha is over 1/2;
- objects are the connected components of each colour (`scipy.ndimage.label`) above a minimum
  area (spurious specks of a generated image are dropped); two same-coloured objects that touch
  are split along the image's midline, where the world puts the border of two opposite positions;
- the shape is the world's template (`world.shape_coverage`) of best soft IoU against the blob's
  alpha, each shape's template placed from the blob's moments and refined over a few extents and
  offsets; size and position come from the best template's extent and centre.

Images of any square size are read at `WORK_SIZE` at most (box-downsampled, as the renderer itself
downsamples): the world is resolution independent and the fit costs the same at every size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from editsweep.toy import world

WORK_SIZE = 64  # larger images are box-downsampled to this side before detection
SEED_CHROMA = 80.0  # a pixel this saturated is surely an object's (backgrounds reach 56)
MIN_ALPHA = 0.5  # a pixel belongs to an object where the object explains more than half of it
MIN_AREA = 8.0  # pixels at SIZE 32 (scaled by area): a small star covers ~30, a VAE's speck a few
LARGE_FROM = 13.0  # extent at SIZE 32 above which an object is large (small 10, large 16)
GRADIENT_FROM = 40.0  # RGB distance of a background's two ends above which it is a gradient
MAX_SINGLE_EXTENT = 19.5  # a blob wider than this at SIZE 32 is two objects (large is 16 + jitter)
_COLOR_NAMES = tuple(world.COLORS)
_PALETTE = np.array([world.COLORS[c] for c in _COLOR_NAMES], dtype=np.float64)
_BACKGROUND_NAMES = tuple(world.BACKGROUNDS)
_BACKGROUND_PALETTE = np.array([world.BACKGROUNDS[b] for b in _BACKGROUND_NAMES], dtype=np.float64)
_SCALES = (0.9, 0.95, 1.0, 1.05, 1.1)  # extents tried around each shape's moment estimate
_OFFSETS = (-0.5, 0.0, 0.5)  # centre offsets tried, in pixels at SIZE 32


@dataclass(frozen=True)
class DetectedObject:
    """One object found: its attributes in the world's vocabulary and the fit they come from.

    `cx`, `cy` and `extent` are in pixels at the world's SIZE (32), whatever the image's size;
    `iou` is the soft IoU of the best template, `area` the blob's area at SIZE 32.
    """

    color: str
    shape: str
    size: str
    position: str
    cx: float
    cy: float
    extent: float
    area: float
    iou: float


@dataclass(frozen=True)
class Detection:
    """What the detector read from one image: objects (left to right, top to bottom) and background
    (one name when flat, the two ends of a gradient in no particular order otherwise)."""

    objects: tuple[DetectedObject, ...]
    background: tuple[str, ...]

    def at(self, position: str) -> list[DetectedObject]:
        """The objects whose nearest world position is `position`."""
        return [o for o in self.objects if o.position == position]


def to_array(image: Any) -> np.ndarray:
    """`image` as (H, W, 3) float64 in [0, 255]: a PIL image, a (3, H, W) tensor or array in [0, 1],
    or an (H, W, 3) array (uint8 in [0, 255], float in [0, 1])."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"the detector reads an RGB image: PIL, (3, H, W) or (H, W, 3); got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64)
    return np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0


def detect(image: Any) -> Detection:
    """Find the objects and the background of a toy-world image (see the module docstring)."""
    pixels = to_array(image)
    height, width = pixels.shape[:2]
    if height != width:
        raise ValueError(f"toy-world images are square; got {width}x{height} (crop it to a square first)")
    if height > WORK_SIZE:
        resized = Image.fromarray(np.round(pixels).astype(np.uint8)).resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BOX)
        pixels = np.asarray(resized, dtype=np.float64)
    size = pixels.shape[0]
    scale = size / world.SIZE
    chroma = pixels.max(axis=-1) - pixels.min(axis=-1)
    background = _fit_background(pixels, chroma > SEED_CHROMA)
    alpha, label = _unmix(pixels, background)
    blobs = _blobs(alpha, label, scale)
    occupied = label >= 0
    objects = [_fit_object(alpha[..., k], mask, occupied & ~mask, _COLOR_NAMES[k], scale) for k, mask in blobs]
    objects.sort(key=lambda o: (o.cx + o.cy, o.cx))
    return Detection(objects=tuple(objects), background=_name_background(background))


def _fit_background(pixels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The background everywhere, (H, W, 3): a plane per channel fitted on pixels away from objects.

    A least-squares fit, then a refit without the pixels it explains worst (soft object edges the
    seeds missed); a flat median where almost everything is object.
    """
    size = pixels.shape[0]
    grow = max(1, round(2 * size / world.SIZE))
    free = ~ndimage.binary_dilation(seeds, iterations=grow)
    if free.sum() < 0.1 * free.size:
        return np.broadcast_to(np.median(pixels.reshape(-1, 3), axis=0), pixels.shape).copy()
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    design = np.stack([np.ones_like(xs), xs, ys], axis=-1)
    a, b = design[free], pixels[free]
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        residual = np.abs(a @ coef - b).max(axis=-1)
        keep = residual <= max(12.0, np.quantile(residual, 0.9))
        a, b = a[keep], b[keep]
    return design @ coef


def _unmix(pixels: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and object colour, the alpha of the best mix of that colour over the background
    ((H, W, K) in [0, 1]), and the colour index that explains each pixel best ((H, W), -1 where
    no colour covers at least MIN_ALPHA of it)."""
    direction = _PALETTE[None, None] - background[:, :, None]  # (H, W, K, 3)
    offset = (pixels - background)[:, :, None]
    norm = np.maximum((direction**2).sum(-1), 1e-6)
    alpha = np.clip((offset * direction).sum(-1) / norm, 0.0, 1.0)
    residual = ((offset - alpha[..., None] * direction) ** 2).sum(-1)
    best = residual.argmin(axis=-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]
    return alpha, np.where(best_alpha >= MIN_ALPHA, best, -1)


def _blobs(alpha: np.ndarray, label: np.ndarray, scale: float) -> list[tuple[int, np.ndarray]]:
    """(colour index, blob mask) of each object: connected components per colour above the minimum
    area, same-coloured touching objects split along the midline of their long side."""
    min_area = MIN_AREA * scale**2
    found = []
    for k in range(len(_COLOR_NAMES)):
        components, count = ndimage.label(label == k)
        for index in range(1, count + 1):
            for part in _split(components == index, scale):
                area = alpha[..., k][part].sum()
                if area >= min_area:
                    found.append((k, part, area))
    return [(k, part) for k, part, area in found if not _is_seam(k, part, area, found)]


def _is_seam(k: int, part: np.ndarray, area: float, found: list[tuple[int, np.ndarray, float]]) -> bool:
    """Whether the blob is the blurred seam where two touching objects of other colours meet (red
    against yellow mixes to orange): it borders larger blobs of at least two other colours."""
    ring = ndimage.binary_dilation(part, iterations=1)
    neighbours = {j for j, other, other_area in found if j != k and other_area > area and (ring & other).any()}
    return len(neighbours) >= 2


def _split(component: np.ndarray, scale: float) -> list[np.ndarray]:
    """The component, or its two halves when it is too wide (or tall) for one object."""
    ys, xs = np.nonzero(component)
    half = component.shape[0] // 2
    if xs.max() - xs.min() + 1 > MAX_SINGLE_EXTENT * scale:
        left = component.copy()
        left[:, half:] = False
        return [left, component & ~left]
    if ys.max() - ys.min() + 1 > MAX_SINGLE_EXTENT * scale:
        top = component.copy()
        top[half:] = False
        return [top, component & ~top]
    return [component]


def _fit_object(alpha: np.ndarray, mask: np.ndarray, others: np.ndarray, color: str, scale: float) -> DetectedObject:
    """The object of `color` under `mask`: the template of best soft IoU against its alpha, read on
    the blob and its soft edge (a few pixels around it), not on pixels of `others` objects."""
    size = alpha.shape[0]
    grow = max(1, round(2 * scale))
    region = ndimage.binary_dilation(mask, iterations=grow) & ~others
    soft = np.where(region, alpha, 0.0)
    weight = soft.sum()
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    mx, my = (soft * xs).sum() / weight, (soft * ys).sum() / weight
    std = np.sqrt(((soft * ((xs - mx) ** 2 + (ys - my) ** 2)).sum() / weight))
    best = (-1.0, world.SHAPES[0], mx, my, std)  # (iou, shape, cx, cy, extent): any template beats it
    for shape in world.SHAPES:
        ox, oy, spread = _template_moments(shape)
        extent0 = std / spread
        cx0, cy0 = mx - ox * extent0, my - oy * extent0
        for factor, dx, dy in itertools.product(_SCALES, _OFFSETS, _OFFSETS):
            extent = extent0 * factor
            cx, cy = cx0 + dx * scale, cy0 + dy * scale
            template = world.shape_coverage(shape, cx, cy, extent, size)
            iou = np.minimum(template, soft).sum() / max(np.maximum(template, soft).sum(), 1e-9)
            if iou > best[0]:
                best = (float(iou), shape, cx, cy, extent)
    iou, shape, cx, cy, extent = best
    cx, cy, extent = cx / scale, cy / scale, extent / scale
    position = min(world.POSITIONS, key=lambda p: (world.POSITIONS[p][0] - cx) ** 2 + (world.POSITIONS[p][1] - cy) ** 2)
    return DetectedObject(
        color=color,
        shape=shape,
        size="large" if extent >= LARGE_FROM else "small",
        position=position,
        cx=cx,
        cy=cy,
        extent=extent,
        area=float(weight / scale**2),
        iou=iou,
    )


@lru_cache(maxsize=None)
def _template_moments(shape: str) -> tuple[float, float, float]:
    """(centroid x offset, centroid y offset, radial std), each per unit of extent, of `shape`'s
    template: what turns a blob's moments into a first guess of its centre and extent."""
    size, extent = 128, 64.0
    coverage = world.shape_coverage(shape, size / 2, size / 2, extent, size).astype(np.float64)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    weight = coverage.sum()
    mx, my = (coverage * xs).sum() / weight, (coverage * ys).sum() / weight
    std = np.sqrt((coverage * ((xs - mx) ** 2 + (ys - my) ** 2)).sum() / weight)
    return (mx - size / 2) / extent, (my - size / 2) / extent, std / extent


def _name_background(background: np.ndarray) -> tuple[str, ...]:
    """One background name when flat, else the names of the gradient's two ends.

    A linear gradient over a square takes its extremes at two opposite corners: the diagonal whose
    ends differ most gives them.
    """
    corners = ((background[0, 0], background[-1, -1]), (background[0, -1], background[-1, 0]))
    first, last = max(corners, key=lambda pair: np.linalg.norm(pair[0] - pair[1]))
    if np.linalg.norm(first - last) < GRADIENT_FROM:
        return (_nearest_background(background.reshape(-1, 3).mean(axis=0)),)
    names = (_nearest_background(first), _nearest_background(last))
    return names if names[0] != names[1] else names[:1]


def _nearest_background(rgb: np.ndarray) -> str:
    return _BACKGROUND_NAMES[int(np.linalg.norm(_BACKGROUND_PALETTE - rgb, axis=-1).argmin())]


def degrade(image: Image.Image, rng: np.random.Generator, sigma: float = 0.7, noise: float = 5.0) -> Image.Image:
    """`image` blurred by a Gaussian of `sigma` pixels plus Gaussian noise of std `noise` (of 255):
    what a VAE round trip roughly does to a render, for measuring the detector on soft images."""
    pixels = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), sigma=(sigma, sigma, 0), mode="nearest")
    pixels = pixels + rng.normal(0.0, noise, pixels.shape)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def accuracy(n: int, seed: int = 0, blur: bool = False, size: int = world.SIZE) -> dict[str, float]:
    """The detector's accuracy on `n` random scenes (scene i drawn from SeedSequence([seed, i])),
    rendered exactly or degraded by `degrade`.

    Per object (matched to the detection at its position; none there counts as wrong): "color",
    "shape", "size", "position". Per scene: "background" (the set of names) and "count" (as
    many objects found as drawn).
    """
    hits = dict.fromkeys(("color", "shape", "size", "position", "background", "count"), 0)
    n_objects = 0
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        scene = world.random_scene(rng)
        image = world.render(scene, size)
        found = detect(degrade(image, rng) if blur else image)
        hits["background"] += sorted(found.background) == sorted(scene.background)
        hits["count"] += len(found.objects) == len(scene.objects)
        for obj in scene.objects:
            n_objects += 1
            there = found.at(obj.position)
            for attribute in ("color", "shape", "size", "position"):
                hits[attribute] += bool(there) and getattr(there[0], attribute) == getattr(obj, attribute)
    per_scene = ("background", "count")
    return {k: v / (n if k in per_scene else n_objects) for k, v in hits.items()}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The toy-world detector's accuracy on random scenes.")
    parser.add_argument("--n", type=int, default=1000, help="scenes per condition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=world.SIZE, help="render size in pixels")
    args = parser.parse_args()
    for name, blur in (("exact", False), ("blurred (sigma 0.7 px, noise 5/255)", True)):
        scores = accuracy(args.n, args.seed, blur, args.size)
        print(f"{name}, {args.n} scenes at {args.size} px: " + ", ".join(f"{k} {v:.2%}" for k, v in scores.items()))
