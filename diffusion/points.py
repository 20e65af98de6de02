"""Edit points batched in one sampling loop: the points that can share it, and per-row values.

A method that runs several edit points of a group together stacks each point's samples as rows
(point after point) and gives every row its own scale; only the fields that shape the loop itself
(a step count, a mode) must agree within it. Used by controlnet, t2i_adapter and cyclenet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.core.params import Params


def group_points(edit_params: Sequence[Params], *fields: str) -> dict[tuple, list[int]]:
    """The indices of the edit points, grouped by their values of `fields` (those that must be equal
    within one batched sampling loop, e.g. the step count)."""
    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(edit_params):
        groups.setdefault(tuple(getattr(p, f) for f in fields), []).append(k)
    return groups


def per_row(points: Sequence[Params], field: str, batch: int) -> torch.Tensor:
    """One value of `field` per row of the points' samples stacked point after point."""
    values = [float(getattr(p, field)) for p in points]
    return torch.tensor(values, dtype=torch.float64).repeat_interleave(batch)  # float64: step fractions exact
