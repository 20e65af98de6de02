"""`null_text` inversion (Mokady et al. 2023) with Prompt-to-Prompt editing.

DDIM inversion at guidance 1 gives the pivot trajectory. Then, step by step from the noisiest
latent, the null-text (unconditional) embedding is optimised so that the guided DDIM step from the
current latent lands on the pivot's next latent; the current latent then advances with the
optimised embedding. Editing uses the per-step embeddings as the unconditional input of every
row, at the guidance scale they were optimised for. A batch of images is optimised together:
the per-image losses are summed (each image's gradient is its own) and an image that reaches the
early-stop threshold stops changing, so a batch gives the results of its images one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.methods.backbone import Backbone
from editsweep.methods.base import Method, Params, State, register_method, source_prompts
from editsweep.methods.ddim import Schedule, ddim_move, make_schedule, predict_noise
from editsweep.methods.ddim_p2p import invert_source
from editsweep.methods.p2p import P2PParams, p2p_edit


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


@register_method
class NullTextInversion(Method):
    """Null-text inversion, then P2P editing with the tuned per-step null embeddings."""

    name = "null_text"
    InvertParams = NullTextParams
    EditParams = P2PParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: NullTextParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        trajectory = invert_source(backbone, samples, params.steps)
        cond = backbone.encode_text(source_prompts(samples))
        schedule = make_schedule(backbone, params.steps)
        with torch.enable_grad():
            null_embeddings = optimize_null_text(backbone, trajectory, cond, schedule, params)
        return {"noise_latents": trajectory[-1], "null_embeddings": null_embeddings}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: NullTextParams,
        edit_params: Sequence[P2PParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        schedule = make_schedule(backbone, invert_params.steps)
        return p2p_edit(
            backbone,
            samples,
            edit_params,
            state["noise_latents"],
            schedule,
            state["null_embeddings"],
            guidance=invert_params.guidance,
        )
