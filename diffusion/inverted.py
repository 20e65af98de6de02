"""What an inversion hands to an attention editor: where the edit starts and how its source rows
stay on the input.

Every editor denoises rows [sources; targets] from the inverted latent (diffusion/rows.py,
diffusion/p2p.py). The inversions differ only in what they give that loop (methods/inversions/):
the unconditional embedding of each row (per step for Null-text, the source prompt for
Negative-prompt), a guidance scale the state only holds at (Null-text), a trajectory that pins the
source rows (Direct), and the step itself (DDIM, DDPM with stored noise maps for edit-friendly
DDPM inversion, or EDICT's coupled step, which calls the editor's denoiser twice) with the guidance
its source rows retrace the input at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from editsweep.diffusion.ddim import Schedule, ddim_move

Advance = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""(step i of the schedule, latents of every row, their guided noise) -> the latents after step i."""

Denoise = Callable[[torch.Tensor], torch.Tensor]
"""Latents of every row -> their guided noise at the loop's current step: one UNet call with the
editor's control active (its rows laid out as the loop's, [sources; targets])."""


class Sampler(Protocol):
    """A step that calls the denoiser itself, on a state of its own per row (EDICT: the coupled
    pair, two calls per step)."""

    def __call__(self, i: int, state: torch.Tensor, denoise: Denoise) -> torch.Tensor:
        """The rows' state after step i."""

    def latents(self, state: torch.Tensor) -> torch.Tensor:
        """The rows' latents (rows, C, h, w) in a state, to decode."""


def sample_step(
    schedule: Schedule,
    i: int,
    x: torch.Tensor,
    denoise: Denoise,
    advance: Advance | None = None,
    sampler: Sampler | None = None,
) -> torch.Tensor:
    """Step i of an editor's loop on the rows' state `x`: the sampler's when given, else one
    denoiser call and `advance` (None: deterministic DDIM)."""
    if sampler is not None:
        return sampler(i, x, denoise)
    eps = denoise(x)
    if advance is not None:
        return advance(i, x, eps)
    return ddim_move(x, eps, schedule.alphas[i].item(), schedule.alphas[i + 1].item())


@dataclass(frozen=True)
class Inverted:
    """An inversion's result, as every editor reads it.

    `start` (B, C, h, w): the latent the edit starts from, row b for sample b (with a `sampler`:
    its state, e.g. EDICT's pair (B, 2C, h, w)). `uncond`: the unconditional embedding (B, L, D),
    or (steps, B, L, D) for one per step. `guidance`: the scale the result is tuned for (None: any
    scale works). `trajectory` (steps + 1, B, C, h, w): when given, the source rows follow it
    exactly (Direct inversion). `advance`: the sampler's step from one guided noise (None:
    deterministic DDIM); rows are [sources; targets], B at a time, so a per-sample tensor repeats
    over them. `sampler`: a step that calls the editor's denoiser itself, in place of `advance`.
    `source_guidance`: the scale of the source rows (None: the edit's).
    """

    schedule: Schedule
    start: torch.Tensor
    uncond: torch.Tensor
    guidance: float | None = None
    trajectory: torch.Tensor | None = None
    advance: Advance | None = None
    source_guidance: float | None = None
    sampler: Sampler | None = None

    def step(self, i: int, x: torch.Tensor, denoise: Denoise) -> torch.Tensor:
        """The rows' state after step i; `denoise` gives the guided noise of latents at step i."""
        return sample_step(self.schedule, i, x, denoise, self.advance, self.sampler)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The rows' latents in the loop's final state."""
        return x if self.sampler is None else self.sampler.latents(x)

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
