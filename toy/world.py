"""The toy world: scenes of one or two coloured shapes on a plain or gradient background.

A scene is a small value (`Scene`) that renders deterministically to an RGB image and reads as a
caption from a small grammar ("a large red circle on the left on a white background"). Edits are
functions from scene to scene, so every edit query comes with its ground truth: the edited scene
rendered, and the mask of the pixels it changes. The `shapes` dataset (`datasets/shapes.py`), the
pixel detector (`toy/detector.py`) and the training of the toy models (`toy/train.py`) all read
the world from here.

Object colours are saturated and background colours are not, so the detector can separate
objects from backgrounds by saturation alone, and an object is never invisible on its background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # the side in pixels of the world's images, the toy backbone's resolution
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-downsampled: anti-aliased edges

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (235, 215, 25),
    "green": (30, 165, 50),
    "cyan": (20, 195, 215),
    "blue": (35, 60, 215),
    "purple": (135, 45, 200),
    "pink": (240, 90, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "black": (22, 22, 22),
    "beige": (222, 204, 166),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
SIZES: dict[str, float] = {"small": 10.0, "large": 16.0}  # extent (pixels at SIZE 32)
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (8.5, 16.0),
    "right": (23.5, 16.0),
    "top": (16.0, 8.5),
    "bottom": (16.0, 23.5),
    "center": (16.0, 16.0),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Two objects share a scene only at opposite positions: apart, or (two large ones) touching at the edges.
PAIRS = (("left", "right"), ("top", "bottom"))
OPPOSITE = {a: b for pair in PAIRS for a, b in (pair, pair[::-1])}
EDIT_TYPES = ("color", "shape", "size", "move", "add", "remove", "background")
JITTER = 1.0  # pixels of random offset around a position, at SIZE 32


@dataclass(frozen=True)
class Obj:
    """One object: what it is, and where (`dx`, `dy` a small offset in pixels at SIZE 32)."""

    shape: str
    color: str
    size: Literal["small", "large"]
    position: str
    dx: float = 0.0
    dy: float = 0.0

    def words(self, with_size: bool = True, with_position: bool = True) -> str:
        """'a large red circle on the left' (or shorter when parts are left out)."""
        parts = [self.size] if with_size else []
        parts += [self.color, self.shape]
        text = "a " + " ".join(parts)
        return f"{text} {POSITION_PHRASES[self.position]}" if with_position else text


@dataclass(frozen=True)
class Scene:
    """Objects (one or two) on a background: one colour, or a gradient between two."""

    objects: tuple[Obj, ...]
    background: tuple[str, ...]  # one name (flat) or two (a gradient along `angle`)
    angle: float = 0.0

    def caption(
        self, with_size: bool = True, with_position: bool = True, with_background: bool = True
    ) -> str:
        """The grammar's sentence for the scene; the flags drop parts (caption dropout in training)."""
        text = " and ".join(o.words(with_size, with_position) for o in self.objects)
        if with_background:
            text += f" on a {' and '.join(self.background)} background"
        return text


def random_object(rng: np.random.Generator, position: str | None = None, exclude_colors=()) -> Obj:
    """An object with uniformly drawn attributes (a given position, a colour not in `exclude_colors`)."""
    colors = [c for c in COLORS if c not in exclude_colors]
    return Obj(
        shape=SHAPES[_index(rng, len(SHAPES))],
        color=colors[_index(rng, len(colors))],
        size=("small", "large")[_index(rng, 2)],
        position=position or tuple(POSITIONS)[_index(rng, len(POSITIONS))],
        dx=JITTER * (2 * rng.random() - 1),
        dy=JITTER * (2 * rng.random() - 1),
    )


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A scene of one object (70%) or two at opposite positions (30%), on a random background."""
    n = n_objects or (2 if rng.random() < 0.3 else 1)
    if n == 1:
        objects: tuple[Obj, ...] = (random_object(rng),)
    else:
        first, second = PAIRS[_index(rng, len(PAIRS))]
        a = random_object(rng, first)
        objects = (a, random_object(rng, second))
    return Scene(objects=objects, background=random_background(rng), angle=2 * math.pi * rng.random())


def random_background(rng: np.random.Generator) -> tuple[str, ...]:
    """One background colour (60%) or a gradient of two different ones (40%)."""
    names = tuple(BACKGROUNDS)
    first = names[_index(rng, len(names))]
    if rng.random() < 0.6:
        return (first,)
    second = [b for b in names if b != first]
    return (first, second[_index(rng, len(second))])


def _index(rng: np.random.Generator, n: int) -> int:
    # Only rng.random() is used: numpy keeps its bit stream stable across versions, while the
    # algorithms behind integers()/choice() may change, which would change the world.
    return min(int(rng.random() * n), n - 1)


def object_mask(obj: Obj, size: int = SIZE) -> np.ndarray:
    """The object's anti-aliased coverage, (size, size) float32 in [0, 1]."""
    scale = size / SIZE
    cx, cy = POSITIONS[obj.position]
    cx, cy = (cx + obj.dx) * scale, (cy + obj.dy) * scale
    return shape_coverage(obj.shape, cx, cy, SIZES[obj.size] * scale, size)


def shape_coverage(shape: str, cx: float, cy: float, extent: float, size: int) -> np.ndarray:
    """Coverage of `shape` centred at (cx, cy) with side `extent` pixels, in a size x size image."""
    s = SUPERSAMPLE
    big = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(big)
    x0, y0, x1, y1 = ((cx - extent / 2) * s, (cy - extent / 2) * s, (cx + extent / 2) * s, (cy + extent / 2) * s)
    mx, my, r = cx * s, cy * s, extent / 2 * s
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        inset = 0.1 * r  # a square of the same extent as a circle looks larger: shrink it a little
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=255)
    elif shape == "triangle":
        draw.polygon([(mx, y0), (x1, y1 - 0.1 * r), (x0, y1 - 0.1 * r)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            theta = -math.pi / 2 + k * math.pi / 5
            points.append((mx + radius * math.cos(theta), my + 0.08 * r + radius * math.sin(theta)))
        draw.polygon(points, fill=255)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1, y1), fill=255)
        inner = 0.5 * r
        draw.ellipse((mx - inner, my - inner, mx + inner, my + inner), fill=0)
    elif shape == "cross":
        arm = 0.34 * r
        draw.rectangle((x0, my - arm, x1, my + arm), fill=255)
        draw.rectangle((mx - arm, y0, mx + arm, y1), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; the world's shapes are {', '.join(SHAPES)}")
    return np.asarray(big.reduce(s), dtype=np.float32) / 255.0


def background_pixels(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The background alone, (size, size, 3) float32 in [0, 255]."""
    first = np.array(BACKGROUNDS[scene.background[0]], dtype=np.float32)
    if len(scene.background) == 1:
        return np.broadcast_to(first, (size, size, 3)).copy()
    last = np.array(BACKGROUNDS[scene.background[1]], dtype=np.float32)
    coords = np.arange(size, dtype=np.float32) + 0.5
    projection = math.cos(scene.angle) * coords[None, :] + math.sin(scene.angle) * coords[:, None]
    t = (projection - projection.min()) / (projection.max() - projection.min())
    return first * (1 - t[..., None]) + last * t[..., None]


def render(scene: Scene, size: int = SIZE) -> Image.Image:
    """The scene as an RGB image of `size` x `size` pixels."""
    pixels = background_pixels(scene, size)
    for obj in scene.objects:
        alpha = object_mask(obj, size)[..., None]
        pixels = pixels * (1 - alpha) + np.array(COLORS[obj.color], dtype=np.float32) * alpha
    return Image.fromarray(np.round(pixels).clip(0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True)
class Edit:
    """An edit query with its ground truth: source and target scenes, the changed words."""

    edit_type: str
    source: Scene
    target: Scene
    blended_words: tuple[str, str]  # (source word, target word), as PIE-Bench's blended_word

    def mask(self, size: int = SIZE) -> np.ndarray:
        """(size, size) bool: the pixels the edit may change (where source and target renders differ,
        grown by one pixel so that anti-aliased edges count as changed)."""
        a = np.asarray(render(self.source, size), dtype=np.int16)
        b = np.asarray(render(self.target, size), dtype=np.int16)
        changed = np.abs(a - b).max(axis=-1) > 8
        grown = changed.copy()
        grown[1:] |= changed[:-1]
        grown[:-1] |= changed[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        return grown


def random_edit(rng: np.random.Generator, edit_type: str) -> Edit:
    """A random scene and an edit of `edit_type` applied to it (one of EDIT_TYPES)."""
    if edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {edit_type!r}; the world's edit types are {', '.join(EDIT_TYPES)}")
    if edit_type == "remove":
        source = random_scene(rng, n_objects=2)
        k = _index(rng, 2)
        kept, removed = source.objects[1 - k], source.objects[k]
        target = replace(source, objects=(kept,))
        return Edit(edit_type, source, target, _distinct_words(removed, kept))
    source = random_scene(rng, n_objects=1)
    obj = source.objects[0]
    if edit_type == "add":
        if obj.position == "center":
            obj = replace(obj, position=tuple(OPPOSITE)[_index(rng, len(OPPOSITE))])
            source = replace(source, objects=(obj,))
        new = random_object(rng, OPPOSITE[obj.position], exclude_colors=(obj.color,))
        target = replace(source, objects=(obj, new))
        return Edit(edit_type, source, target, (obj.color, new.color))  # colours differ by construction
    if edit_type == "background":  # the first background colour changes, a gradient stays one
        first = source.background[0]
        others = [b for b in BACKGROUNDS if b not in source.background]
        new_first = others[_index(rng, len(others))]
        target = replace(source, background=(new_first, *source.background[1:]))
        return Edit(edit_type, source, target, (first, new_first))
    attribute, values = {
        "color": ("color", tuple(COLORS)),
        "shape": ("shape", SHAPES),
        "size": ("size", tuple(SIZES)),
        "move": ("position", tuple(POSITIONS)),
    }[edit_type]
    others = [v for v in values if v != getattr(obj, attribute)]
    new_value = others[_index(rng, len(others))]
    target = replace(source, objects=(replace(obj, **{attribute: new_value}),))
    words = (getattr(obj, attribute), new_value)
    if edit_type == "move":  # the changed words of a move are the position's last word
        words = (POSITION_PHRASES[words[0]].split()[-1], POSITION_PHRASES[words[1]].split()[-1])
    return Edit(edit_type, source, target, words)


def _distinct_words(removed: Obj, kept: Obj) -> tuple[str, str]:
    """Blended words of a removal: the first of shape, colour, position word in which the removed
    and the kept object differ (positions always do), so that each word names one object."""
    for a, b in ((removed.shape, kept.shape), (removed.color, kept.color)):
        if a != b:
            return a, b
    return POSITION_PHRASES[removed.position].split()[-1], POSITION_PHRASES[kept.position].split()[-1]
