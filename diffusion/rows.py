"""The batch layout every attention editor uses, and its denoising loop.

Rows are [sources (one per sample: the reconstruction branch); targets (one per edit point and
sample, point-major)]: the source rows carry the source prompt and give the editor the attention
or features to inject, the target rows carry the target prompt. The loop starts every row from the
inversion's latent (diffusion/inverted.py), uses its unconditional embedding (per step when it has
one) and its step (which may call the denoiser more than once: EDICT), and pins the source rows to
its trajectory when it gives one. An editor without control may leave the source rows out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import predict_noise
from editsweep.diffusion.inputs import source_prompts, target_prompts
from editsweep.diffusion.inverted import Inverted


def denoise_rows(
    backbone: Backbone,
    inverted: Inverted,
    samples: Sequence[Sample],
    n_points: int,
    scale: float,
    on_step: Callable[[int], None] | None = None,
    sources: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided sampling over the rows at one guidance scale: final (source (B), target (P*B)) latents.

    `on_step(i)` runs before step i's UNet calls (an editor's control reads the step there).
    `sources` False: the target rows alone (no source branch; the source latents come back empty).
    """
    batch = len(samples) if sources else 0
    schedule = inverted.schedule
    cond = backbone.encode_text(target_prompts(samples)).repeat(n_points, 1, 1)
    if sources:
        cond = torch.cat([backbone.encode_text(source_prompts(samples)), cond])
    copies = n_points + int(sources)
    uncond = inverted.uncond
    uncond_rows = torch.cat([uncond] * copies, dim=uncond.dim() - 3)
    x = torch.cat([inverted.start.float()] * copies)
    guidance = inverted.row_guidance(batch, len(x), scale)
    for i in range(schedule.steps):
        if on_step is not None:
            on_step(i)
        step_uncond = uncond_rows[i] if uncond_rows.dim() == 4 else uncond_rows
        alpha = schedule.alphas[i].item()
        denoise = partial(
            predict_noise, backbone, t=schedule.timesteps[i], cond=cond, uncond=step_uncond, guidance=guidance, alpha=alpha
        )
        x = inverted.step(i, x, denoise)
        if inverted.trajectory is not None and sources:
            x[:batch] = inverted.trajectory[schedule.steps - i - 1].float()
    x = inverted.latents(x)
    return x[:batch], x[batch:]


def by_scale(guidance: Sequence[float]) -> dict[float, list[int]]:
    """Point indices grouped by guidance scale: one loop per scale (a source row has one scale)."""
    groups: dict[float, list[int]] = {}
    for k, scale in enumerate(guidance):
        groups.setdefault(float(scale), []).append(k)
    return groups
