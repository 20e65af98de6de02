"""What a flow-matching inversion hands to an editor, and the two halves of the loop around it.

The rectified-flow counterpart of diffusion/inverted.py for the inversion x editor pairs
(methods/pairs.py) on SD3 and FLUX: a flow inversion (methods/inversions/flow.py, rf_solver.py,
fireflow.py) integrates the flow ODE from the clean latent up to where editing starts with its
solver (Euler, RF-Solver's second-order step, FireFlow's midpoint step; diffusion/flow.py),
saving the attention values of the first `inject` editing steps it retraces (RF-Solver-Edit's
feature sharing, Wang et al. 2025, Sec. 4.3; diffusion/flow.py `ValueSharing`); an editor
(methods/editors/plain.py, value_sharing.py) samples back with the same solver under the target
prompt, substituting the saved values or not. The loops are those of methods/flow_inversion.py and
methods/flow_solver.py, so that a pair equals the corresponding method (tests/methods/test_flow_pairs.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import FlowBackbone, FlowText, ValueSharing, negative_text, value_sharing
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts

State = dict[str, torch.Tensor]

Solve = Callable[
    [FlowBackbone, torch.Tensor, Sequence[tuple[torch.Tensor, torch.Tensor, int]], FlowText, torch.Tensor,
     FlowText | None, ValueSharing | None],
    torch.Tensor,
]
"""(backbone, latents, path of (sigma, sigma', editing step), text, guidance (rows,), negative text,
sharing) -> the latents at the path's end: one solver's integration of the flow ODE. The solver
tells `sharing` the editing step of each model call through `at(step, call)`: a `ValueSharing`, or
any control with that method (diffusion/flow_mutual.py `MutualKV`)."""


@dataclass(frozen=True)
class FlowInverted:
    """A flow inversion's result, as the flow editors read it.

    `latents` (B, C, h, w) at `sigmas[start]`; `solve` the inversion's solver, which editing uses
    too; `values` the attention values saved while inverting, keyed as `ValueSharing` keys them,
    for the editing steps `shared` (empty: none saved); `inverted_with_negative` whether they hold
    SD3's classifier-free guidance rows [negative; text] (inverting at a guidance other than 1).
    `edit_guidance` is the family's default editing scale of the inversion's method; `guidance`
    is always None (any scale works), as `Inverted.guidance` of an inversion that fixes none.
    """

    latents: torch.Tensor
    sigmas: torch.Tensor
    start: int
    solve: Solve
    edit_guidance: float
    values: State = field(default_factory=dict)
    shared: frozenset[int] = frozenset()
    inverted_with_negative: bool = False
    guidance: float | None = None


def invert_path(sigmas: torch.Tensor, start: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Inversion from sigma 0 up to `sigmas[start]`: the step from sigmas[i] to sigmas[i - 1] is the
    one editing step i - 1 retraces."""
    return [(sigmas[i], sigmas[i - 1], i - 1) for i in range(len(sigmas) - 1, start, -1)]


def edit_path(sigmas: torch.Tensor, start: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Editing from `sigmas[start]` down to 0, step i from sigmas[i] to sigmas[i + 1]."""
    return [(sigmas[i], sigmas[i + 1], i) for i in range(start, len(sigmas) - 1)]


def flow_inversion_state(
    backbone: FlowBackbone,
    samples: Sequence[Sample],
    solve: Solve,
    steps: int,
    start: int,
    guidance: float,
    inject: int,
) -> State:
    """The samples' latents inverted under their source prompts with `solve` at `guidance` up to
    `sigmas[start]` (state["latents"]), and the values of the first `inject` editing steps
    (state["value.<step>.<call>.<block>"])."""
    x = backbone.encode_images(images_tensor(samples, backbone.device)).float()
    sigmas = backbone.sigmas(steps, x.shape[-1])
    scale = torch.full((len(samples),), guidance)
    text = backbone.encode_text(source_prompts(samples))
    negative = negative_text(backbone, len(samples), scale)
    state: State = {}
    sharing = ValueSharing(state, True, set(range(start, start + inject))) if inject else None
    with value_sharing(backbone, sharing):
        x = solve(backbone, x, invert_path(sigmas, start), text, scale, negative, sharing)
    state["latents"] = x
    return state


def flow_edit(
    backbone: FlowBackbone,
    inverted: FlowInverted,
    samples: Sequence[Sample],
    guidance: Sequence[float],
    inject: Sequence[int],
) -> list[torch.Tensor]:
    """One (B, 3, H, W) image per point: the inverted latents sampled under the target prompts with
    the inversion's solver at each point's `guidance`, the saved values substituted in its first
    `inject` editing steps (0: none). Points with the same `inject` share one batched loop."""
    batch = len(samples)
    results: list[torch.Tensor | None] = [None] * len(guidance)
    groups: dict[int, list[int]] = {}
    for k, n in enumerate(inject):
        groups.setdefault(n, []).append(k)
    for n, indices in groups.items():
        points = len(indices)
        scale = torch.tensor([guidance[k] for k in indices]).repeat_interleave(batch)
        negative = negative_text(backbone, batch * points, scale)
        text = backbone.encode_text(target_prompts(samples)).repeat(points)
        sharing = None
        if n:
            values = _laid_out(inverted, batch, points, negative is not None)
            sharing = ValueSharing(values, False, set(range(inverted.start, inverted.start + n)))
        x = inverted.latents.float().repeat(points, 1, 1, 1)
        with value_sharing(backbone, sharing):
            x = inverted.solve(backbone, x, edit_path(inverted.sigmas, inverted.start), text, scale, negative, sharing)
        for k, image in zip(indices, backbone.decode(x).split(batch), strict=True):
            results[k] = image
    return results


def _laid_out(inverted: FlowInverted, batch: int, points: int, with_negative: bool) -> State:
    """The saved values repeated to the editing rows: `points` x `batch` rows, or SD3's [negative;
    text] halves of them under guidance. The negative half takes the inversion's negative rows where
    it had some, else its text rows (inverting at guidance 1 evaluates only those)."""
    out: State = {}
    for key, saved in inverted.values.items():
        if not key.startswith("value."):
            continue
        text = saved[-batch:]
        rows = text.repeat(points, 1, 1)
        if with_negative:
            negative = saved[:batch] if inverted.inverted_with_negative else text
            rows = torch.cat([negative.repeat(points, 1, 1), rows])
        out[key] = rows
    return out
