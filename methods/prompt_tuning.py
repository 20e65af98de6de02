"""`prompt_tuning`: Prompt Tuning Inversion (Dong et al., ICCV 2023, arXiv 2305.04441).

Reconstruction stage (`invert`): DDIM-invert the input (guidance 1, source prompt or the empty
prompt) over `encoding_ratio` of the trajectory, then walk back down it and, at every step, tune a
conditional embedding c_t so that the classifier-free-guided DDIM step (null-prompt unconditional,
scale w) from the current latent lands on the trajectory's next latent. The image is now encoded
in the per-step embeddings. Editing stage (`edit`): guided DDIM from the inverted latent with
c = eta * c_target + (1 - eta) * c_t at every step: eta 0 reconstructs, eta 1 is plain DDIM editing.

Choices where the sources read here leave room (the paper's abstract and Fig. 2 caption, the
two public re-implementations wmchen/diffusion-inversion `PTI` and XiruiTeng/prompt-tuning-inversion;
the full text was not reachable):
- optimiser: Adam with learning rate beta, a fresh one at every diffusion step (as wmchen's
  `PTI` and Null-text inversion); c_t starts from the previous step's optimum, the
  first from the source embedding;
- loss: mean squared error between the guided step's output and the trajectory's latent, per image;
  a batch minimises the sum of per-image losses, so each image gets the gradient it would alone;
- the current latent follows the reconstruction: after tuning c_t it advances by the guided step
  with the tuned c_t (not by jumping onto the inverted trajectory), so each step corrects the error
  left by the previous ones, on the path that editing with eta 0 retraces;
- the whole 77-token embedding is tuned; the UNet and text encoder stay frozen.
The state is batch-first: `latents` (B, C, h, w) at the start step, `embeddings`
(B, steps - start, 77, D), one tuned embedding per denoising step from the start step on.
"Latent interpolation" is not defined in those sources; the reading implemented: at every step take
the guided DDIM step from the current latent once with c_target and once with c_t and mix the two
next latents with eta (equivalently, mix the two guided noise predictions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, ddim_invert, ddim_move, encoding_start, make_schedule, predict_noise
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.methods.base import Method, Params, State, register_method


class PTIInvertParams(Params):
    """What changes the inversion: the schedule, how much of it is inverted, and the tuning."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of a full trajectory")
    encoding_ratio: float = Field(
        0.8, gt=0, le=1, description="fraction of the trajectory inverted; editing restarts from there"
    )
    inner_steps: int = Field(1, ge=1, le=100, description="N: optimiser iterations per diffusion step")
    learning_rate: float = Field(0.1, gt=0, le=10, description="beta: Adam learning rate for the embeddings")
    tuning_guidance: float = Field(
        7.5, ge=0, le=50, description="w: CFG scale the embeddings are tuned for (match the edit's guidance)"
    )


class PTIEditParams(Params):
    """What only changes the edit."""

    eta: float = Field(0.9, ge=0, le=1, description="weight of the target prompt (0 reconstructs, 1 is DDIM edit)")
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale while sampling")
    interpolation: Literal["embedding", "latent"] = Field(
        "embedding", description="interpolate the conditional embeddings, or the next latents of both"
    )


def tune_embeddings(
    backbone: Backbone,
    trajectory: torch.Tensor,
    schedule: Schedule,
    start: int,
    init: torch.Tensor,
    null: torch.Tensor,
    params: PTIInvertParams,
) -> torch.Tensor:
    """Per-step conditional embeddings (B, steps - start, 77, D) that make guided DDIM retrace a path.

    `trajectory` is `ddim_invert(..., start=start)`'s; the path starts at its noisiest latent.
    """
    x = trajectory[-1]
    cond = init.float()
    tuned = []
    for k, i in enumerate(range(start, schedule.steps)):
        t, a_from, a_to = schedule.timesteps[i], schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        goal = trajectory[-2 - k]
        with torch.no_grad():
            eps_null = predict_noise(backbone, x, t, null, alpha=a_from)

        def guided_step(c: torch.Tensor) -> torch.Tensor:
            eps = predict_noise(backbone, x, t, c, alpha=a_from)
            return ddim_move(x, eps_null + params.tuning_guidance * (eps - eps_null), a_from, a_to)

        cond = cond.detach().clone().requires_grad_(True)  # the optimiser updates it in place
        optimizer = torch.optim.Adam([cond], lr=params.learning_rate)
        with torch.enable_grad():
            for _ in range(params.inner_steps):
                loss = (guided_step(cond) - goal).pow(2).flatten(1).mean(1).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        cond = cond.detach()
        with torch.no_grad():
            x = guided_step(cond)
        tuned.append(cond)
    return torch.stack(tuned, dim=1)


@register_method
class PromptTuning(Method):
    """Prompt Tuning Inversion: per-step tuned conditional embeddings, interpolated with the target."""

    name = "prompt_tuning"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    InvertParams = PTIInvertParams
    EditParams = PTIEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: PTIInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        source = backbone.encode_text(source_prompts(samples))
        null = backbone.encode_text([""] * len(samples))
        schedule = make_schedule(backbone, params.steps)
        start = encoding_start(params.steps, params.encoding_ratio)
        trajectory = ddim_invert(backbone, latents, schedule, source, start=start)
        embeddings = tune_embeddings(backbone, trajectory, schedule, start, source, null, params)
        return {"latents": trajectory[-1], "embeddings": embeddings}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: PTIInvertParams,
        edit_params: Sequence[PTIEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        latents = self.edit_latents(backbone, state, samples, invert_params, edit_params)
        return list(backbone.decode(latents).split(len(samples)))

    @torch.no_grad()
    def edit_latents(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: PTIInvertParams,
        edit_params: Sequence[PTIEditParams],
    ) -> torch.Tensor:
        """Edited clean latents (points x samples, C, h, w), every point in one denoising loop.

        Rows of the "latent" variant need a second conditional pass (with c_t); those passes join
        the same UNet call, so a mixed sweep still costs one loop.
        """
        n_points, batch = len(edit_params), len(samples)
        device = backbone.device
        x = state["latents"].float().repeat(n_points, 1, 1, 1)
        tuned = state["embeddings"]
        target = backbone.encode_text(target_prompts(samples)).float().repeat(n_points, 1, 1)
        null = backbone.encode_text([""] * batch).repeat(n_points, 1, 1)
        eta = torch.tensor([p.eta for p in edit_params], device=device).repeat_interleave(batch)
        guidance = torch.tensor([p.guidance for p in edit_params], device=device).repeat_interleave(batch)
        on_latents = torch.tensor([p.interpolation == "latent" for p in edit_params], device=device)
        on_latents = on_latents.repeat_interleave(batch)
        both = on_latents.nonzero().squeeze(1)
        eta_cond = torch.where(on_latents, 1.0, eta).view(-1, 1, 1)
        eta_next = eta[both].view(-1, 1, 1, 1)
        schedule = make_schedule(backbone, invert_params.steps)
        start = encoding_start(invert_params.steps, invert_params.encoding_ratio)
        for k, i in enumerate(range(start, schedule.steps)):
            t, a_from, a_to = schedule.timesteps[i], schedule.alphas[i].item(), schedule.alphas[i + 1].item()
            c_t = tuned[:, k].repeat(n_points, 1, 1)
            cond = eta_cond * target + (1 - eta_cond) * c_t
            eps = predict_noise(
                backbone,
                torch.cat([x, x[both]]),
                t,
                torch.cat([cond, c_t[both]]),
                torch.cat([null, null[both]]),
                torch.cat([guidance, guidance[both]]),
                alpha=a_from,
            )
            moved = ddim_move(torch.cat([x, x[both]]), eps, a_from, a_to)
            x, reconstruction = moved[: len(x)], moved[len(x) :]
            x[both] = eta_next * x[both] + (1 - eta_next) * reconstruction
        return x
