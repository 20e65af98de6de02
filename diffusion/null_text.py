"""Null-text optimisation (Mokady et al. 2023): per-step unconditional embeddings under which
guided DDIM retraces a DDIM inversion trajectory.

Step by step from the noisiest latent, the null-text (unconditional) embedding is optimised so that
the guided DDIM step from the current latent lands on the pivot's next latent; the current latent
then advances with the optimised embedding. A batch of images is optimised together: the per-image
losses are summed (each image's gradient is its own) and an image that reaches the early-stop
threshold stops changing, so a batch gives the results of its images one by one. Used by the
`null_text` inversion (methods/inversions/null_text.py) and by `timestep_injection`.
"""

from __future__ import annotations

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, ddim_move, predict_noise


class NullTextParams(Params):
    """Everything here changes the inversion; the edit runs at `guidance` too."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale the null embeddings are tuned for")
    inner_steps: int = Field(10, ge=0, le=1000, description="optimisation steps per timestep")
    learning_rate: float = Field(1e-2, gt=0, le=1, description="Adam lr at the first step, decayed linearly")
    lr_decay: float = Field(0.01, ge=0, lt=1, description="lr(i) = learning_rate * (1 - lr_decay * i)")
    epsilon: float = Field(1e-5, ge=0, description="early stop when loss < epsilon + 2e-5 * step")


def optimize_null_text(
    backbone: Backbone,
    trajectory: torch.Tensor,
    cond: torch.Tensor,
    schedule: Schedule,
    params: NullTextParams,
) -> torch.Tensor:
    """Per-step null embeddings (steps, B, L, D) that make guided DDIM retrace the pivot trajectory."""
    batch = cond.shape[0]
    uncond = backbone.encode_text([""] * batch).float()
    x = trajectory[-1].float()
    tuned = []
    for i in range(schedule.steps):
        t = schedule.timesteps[i]
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        pivot = trajectory[schedule.steps - i - 1].float()
        with torch.no_grad():
            eps_cond = predict_noise(backbone, x, t, cond, alpha=a_from)
        embedding = uncond.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=params.learning_rate * (1 - params.lr_decay * i))
        done = torch.zeros(batch, dtype=torch.bool, device=x.device)
        for _ in range(params.inner_steps):
            eps_uncond = predict_noise(backbone, x, t, embedding, alpha=a_from)
            eps = eps_uncond + params.guidance * (eps_cond - eps_uncond)
            losses = ((ddim_move(x, eps, a_from, a_to) - pivot) ** 2).flatten(1).mean(1)
            before = embedding.detach().clone()
            optimizer.zero_grad()
            losses.sum().backward()
            optimizer.step()
            with torch.no_grad():
                embedding[done] = before[done]  # images that stopped early stay where they stopped
            done |= losses.detach() < params.epsilon + 2e-5 * i
            if bool(done.all()):
                break
        embedding = embedding.detach()
        tuned.append(embedding)
        with torch.no_grad():
            x = ddim_move(
                x, predict_noise(backbone, x, t, cond, embedding, params.guidance, alpha=a_from), a_from, a_to
            )
        uncond = embedding
    return torch.stack(tuned)
