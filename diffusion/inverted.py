"""What an inversion hands to an attention editor: where the edit starts and how its source rows
stay on the input.

Every editor (Prompt-to-Prompt today) denoises rows [sources; targets] from the inverted latent.
The inversions differ only in what they give that loop (methods/inversions/): the unconditional
embedding of each row (per step for Null-text, the source prompt for Negative-prompt), a guidance
scale the state only holds at (Null-text), a trajectory that pins the source rows (Direct), and
the step itself (DDIM, or DDPM with stored noise maps for edit-friendly DDPM inversion) with the
guidance its source rows retrace the input at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from editsweep.diffusion.ddim import Schedule, ddim_move

Advance = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""(step i of the schedule, latents of every row, their guided noise) -> the latents after step i."""


@dataclass(frozen=True)
class Inverted:
    """An inversion's result, as every editor reads it.

    `start` (B, C, h, w): the latent the edit starts from, row b for sample b. `uncond`: the
    unconditional embedding (B, L, D), or (steps, B, L, D) for one per step. `guidance`: the
    scale the result is tuned for (None: any scale works). `trajectory` (steps + 1, B, C, h, w):
    when given, the source rows follow it exactly (Direct inversion). `advance`: the sampler's step
    (None: deterministic DDIM); rows are [sources; targets], B at a time, so a per-sample tensor
    repeats over them. `source_guidance`: the scale of the source rows (None: the edit's).
    """

    schedule: Schedule
    start: torch.Tensor
    uncond: torch.Tensor
    guidance: float | None = None
    trajectory: torch.Tensor | None = None
    advance: Advance | None = None
    source_guidance: float | None = None

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The rows' latents after step i."""
        if self.advance is not None:
            return self.advance(i, x, eps)
        return ddim_move(x, eps, self.schedule.alphas[i].item(), self.schedule.alphas[i + 1].item())

    @property
    def retrace_scale(self) -> float:
        """The scale at which the source rows retrace the input: the inversion's own source scale,
        else the scale it is tuned for, else guidance 1 (DDIM inversion's reconstruction)."""
        return self.source_guidance or self.guidance or 1.0

    def row_guidance(self, n_source: int, n_rows: int, scale: float) -> torch.Tensor | float:
        """The guidance of every row: `source_guidance` on the source rows when set, else `scale`."""
        if self.source_guidance is None:
            return scale
        return torch.tensor([self.source_guidance] * n_source + [scale] * (n_rows - n_source))
