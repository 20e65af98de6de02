"""`precomputed`: evaluates edited images made elsewhere (another codebase, a paper's released outputs).

The image for a sample is `folder / pattern.format(sample_id=..., seed=...)`; when the pattern has
no image extension, `.png`, `.jpg`, `.jpeg` and `.webp` are tried (exactly one must exist). Each
file is brought to the backbone's resolution like the inputs (`fit_square`: center crop, LANCZOS),
so it is scored against the input the worker scores it with. The backbone itself runs nothing.

Only files inside `folder` are read (a sample id or symlink leading out of it is refused, see
`resolve_file`). Files are read in `invert`, so a missing or unreadable file fails only its own sample: the worker
retries a failing batch group by group and turns that sample's tasks into error rows naming the
file, while the other samples go on. `folder` is made absolute when the spec is loaded (relative to
the spec file's folder), so every worker reads the same place.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator

from editsweep.datasets.base import Sample
from editsweep.datasets.entries import resolve_inside
from editsweep.datasets.images import fit_square, load_rgb
from editsweep.diffusion.backbone import Backbone
from editsweep.methods.base import Method, Params, State, register_method

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
PLACEHOLDERS = {"sample_id", "seed"}


class PrecomputedInvertParams(Params):
    """Where the edited images are. Part of the group key: a grid over folders compares result sets."""

    folder: str = Field(
        description="local folder holding the edited images (a relative path is relative to the spec file)",
        json_schema_extra={"local_path": True},
    )
    pattern: str = Field(
        "{sample_id}.png",
        description="file name inside `folder` with {sample_id} and optionally {seed}; without an "
        "extension, .png/.jpg/.jpeg/.webp are tried",
    )

    @field_validator("pattern")
    @classmethod
    def _known_placeholders(cls, pattern: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
        except ValueError as err:
            raise ValueError(f"pattern {pattern!r} is not a valid format string: {err}") from err
        if "sample_id" not in names:
            raise ValueError(f"pattern {pattern!r} must contain {{sample_id}}")
        unknown = names - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"pattern {pattern!r} has unknown placeholders {sorted(unknown)}; allowed: {{sample_id}}, {{seed}}"
            )
        if PurePath(pattern).is_absolute() or ".." in PurePath(pattern).parts:
            raise ValueError(
                f"pattern {pattern!r} must name a file relative to `folder`, without '..' and not absolute: "
                "put the folder itself in `folder`"
            )
        return pattern


def resolve_file(folder: Path, pattern: str, sample_id: str, seed: int) -> Path:
    """The file of (sample, seed), or FileNotFoundError naming what was looked for.

    Each candidate must lie inside `folder` (`resolve_inside`: a sample id such as `../x`, or a
    symlink leading out, raises `DatasetError`), so no file outside it is ever read.
    """
    name = pattern.format(sample_id=sample_id, seed=seed)
    what = f"precomputed image for sample {sample_id!r} seed {seed}"
    has_extension = Path(pattern).suffix.lower() in Image.registered_extensions()
    names = [name] if has_extension else [name + ext for ext in EXTENSIONS]
    candidates = [resolve_inside(folder, n, what) for n in names]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise FileNotFoundError(f"no {what}: {' or '.join(map(str, candidates))}")
    if len(found) > 1:
        raise FileNotFoundError(f"several files could be the {what}: {', '.join(map(str, found))}")
    return found[0]


@register_method
class Precomputed(Method):
    """Returns the images found in `folder`, one per (sample, seed), for every edit point."""

    name = "precomputed"
    families = ("sd", "sd3", "flux", "sdxl", "qwen-image")  # uses only what every backbone has
    InvertParams = PrecomputedInvertParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        """Read and resize each sample's file; raises (naming the file) when one is missing or unreadable."""
        if seeds is None:
            raise ValueError("precomputed needs the sweep seeds (the worker always passes them: seeds=[...])")
        folder = Path(params.folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"precomputed folder {folder} does not exist")
        arrays = []
        for sample, seed in zip(samples, seeds, strict=True):
            image = fit_square(load_rgb(resolve_file(folder, params.pattern, sample.id, seed)), backbone.resolution)
            arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
        return {"images": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(backbone.device)}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[Params],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        return [state["images"].clone() for _ in edit_params]
