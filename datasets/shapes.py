"""`shapes`: edit queries in the toy world (`toy/world.py`), each with its ground truth.

Offline and deterministic. Sample i is drawn from its own RNG seeded with (seed, i), so a sample
does not depend on `n`; its edit type is `edit_types[i % len(edit_types)]`, so every type is
equally represented. The image is the source scene's render; the prompts are the full captions of
the source and target scenes ("a large red circle on the left on a white background"). `meta`:

- "edit_type": one of the world's EDIT_TYPES (color, shape, size, move, add, remove, background);
- "blended_words": [source word, target word], the key `diffusion/p2p.py` reads for LocalBlend;
- "mask": (H, W) bool, the pixels the edit changes (`Edit.mask`), as pie_bench's meta["mask"];
- "target_image": (H, W, 3) uint8, the target scene rendered: the edit's ground truth;
- "source_scene", "target_scene": the scenes as JSON-able dicts (`scene_to_dict`);
- "edited_object": the index of the edited object (in the target scene's objects for "add", in
  the source scene's for "remove"), None for a background edit.

The `shapes_truth` scorer (`bench/metrics/shapes_truth.py`) scores edits against this ground truth.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from editsweep.datasets.base import Dataset, DatasetError, DatasetParams, Sample, register_dataset
from editsweep.toy import world

_ID = re.compile(r"shp-(\d{5})")
EditType = Literal["color", "shape", "size", "move", "add", "remove", "background"]


class ShapesParams(DatasetParams):
    """How many queries, from which seed, of which edit types, at which size."""

    n: int = Field(70, ge=1, le=100000)
    # Non-negative because numpy's SeedSequence only takes non-negative entropy.
    seed: int = Field(0, ge=0)
    edit_types: list[EditType] = Field(default_factory=lambda: list(world.EDIT_TYPES), min_length=1)
    size: int = Field(
        world.SIZE, ge=32, le=512, multiple_of=32, description="render size in pixels (renders are resolution independent)"
    )

    @field_validator("edit_types")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({t for t in value if value.count(t) > 1})
        if repeated:
            raise ValueError(f"edit type(s) {', '.join(repeated)} listed twice: list each edit type once")
        return value


@register_dataset
class ShapesDataset(Dataset):
    """Toy-world edit queries with ground-truth target renders, masks and scenes."""

    name = "shapes"
    Params = ShapesParams
    params: ShapesParams

    def sample_ids(self) -> list[str]:
        """`shp-00000` to `shp-{n-1:05d}`."""
        return [f"shp-{i:05d}" for i in range(self.params.n)]

    def load(self, sample_id: str) -> Sample:
        """Render query `sample_id`: source image, both captions and the ground truth in `meta`."""
        match = _ID.fullmatch(sample_id)
        if match is None or int(match.group(1)) >= self.params.n:
            last = f"shp-{self.params.n - 1:05d}"
            raise DatasetError(f"unknown shapes sample id {sample_id!r} (ids are shp-00000 to {last})")
        index = int(match.group(1))
        edit_type = self.params.edit_types[index % len(self.params.edit_types)]
        rng = np.random.default_rng(np.random.SeedSequence([self.params.seed, index]))
        edit = world.random_edit(rng, edit_type)
        size = self.params.size
        return Sample(
            id=sample_id,
            image=world.render(edit.source, size),
            source_prompt=edit.source.caption(),
            target_prompt=edit.target.caption(),
            meta={
                "edit_type": edit_type,
                "blended_words": list(edit.blended_words),
                "mask": edit.mask(size),
                "target_image": np.asarray(world.render(edit.target, size)),
                "source_scene": scene_to_dict(edit.source),
                "target_scene": scene_to_dict(edit.target),
                "edited_object": edited_object(edit),
            },
        )


def edited_object(edit: world.Edit) -> int | None:
    """The index of the object `edit` changes: in the target scene for "add" (the new object), in
    the source scene for "remove" (the removed one), 0 for one-object edits, None for background."""
    if edit.edit_type == "background":
        return None
    if edit.edit_type == "add":
        return len(edit.target.objects) - 1
    if edit.edit_type == "remove":
        kept = edit.target.objects[0]
        return next(i for i, o in enumerate(edit.source.objects) if o != kept)
    return 0


def scene_to_dict(scene: world.Scene) -> dict[str, Any]:
    """The scene as plain JSON-able values (lists, strings, floats)."""
    return {
        "objects": [
            {"shape": o.shape, "color": o.color, "size": o.size, "position": o.position, "dx": float(o.dx), "dy": float(o.dy)}
            for o in scene.objects
        ],
        "background": list(scene.background),
        "angle": float(scene.angle),
    }


def scene_from_dict(data: dict[str, Any]) -> world.Scene:
    """The inverse of `scene_to_dict`."""
    return world.Scene(
        objects=tuple(world.Obj(**o) for o in data["objects"]),
        background=tuple(data["background"]),
        angle=float(data["angle"]),
    )
