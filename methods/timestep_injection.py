"""`timestep_injection`: latent inversion with timestep-aware text injection sampling.

Jung et al., "Latent Inversion with Timestep-aware Sampling for Training-free Non-rigid Editing"
(arXiv 2402.08601): Imagic without the fine-tuning.

1. Text optimisation (`invert`): Imagic's stage A, e_tgt -> e_opt, UNet frozen.
2. Latent inversion (`invert`), instead of fine-tuning the UNet: the input is inverted under a
   source embedding e_src, with
   - `ddim`: DDIM inversion at guidance 1, conditioned on e_opt;
   - `nti` ("NTI-w/o src"): Null-text inversion at guidance `nti_guidance`, conditioned on e_opt
     (no source prompt needed: e_opt already describes the input);
   - `nti_src` ("NTI-src"): Null-text inversion conditioned on the sample's source prompt (the
     empty prompt when the dataset has none, as in TEdBench).
3. Timestep-aware text injection (`edit`): guided DDIM from the inverted latent, conditioned on
   e_src for the first `src_ratio` of the steps (the structure is laid down from the input's
   own description) and on eta * e_tgt + (1 - eta) * e_opt afterwards. Under NTI the unconditional
   input of step i is the tuned null embedding of step i, else the null prompt.
   src_ratio 1 reproduces the inversion's own reconstruction. All edit points (src_ratio, eta,
   guidance) go through one denoising loop: each row switches its embedding at its own step.

Choices where the sources read here leave room (the paper's abstract; its full method section
was not reachable from this machine): which embedding conditions the inversion in each variant
(above: e_opt, except the source prompt for `nti_src`), that the early-step embedding is the
one the inversion was conditioned on (so src_ratio 1 reconstructs), and that the switch step is
round(src_ratio * steps). Null-text inversion keeps its published defaults (10 inner steps,
lr 1e-2 decayed linearly, early stop) from `NullTextParams`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import ddim_invert, ddim_move, make_schedule, predict_noise
from editsweep.diffusion.finetuning import optimize_target_embeddings
from editsweep.diffusion.inputs import source_prompts, target_prompts
from editsweep.diffusion.null_text import NullTextParams, optimize_null_text
from editsweep.methods.base import Method, Params, State, register_method


class InjectionInvertParams(Params):
    """Text optimisation and latent inversion: shared by every edit point of a group.

    Text optimisation defaults: 200 Adam steps (the paper's setting) at Imagic's SD learning rate
    1e-3; inversion: 50 DDIM steps, Null-text inversion at guidance 7.5 (its paper's setting).
    """

    text_steps: int = Field(200, ge=0, le=100_000, description="Adam steps on the target embedding")
    text_lr: float = Field(1e-3, gt=0, le=1, description="learning rate of the target embedding")
    inversion: Literal["ddim", "nti", "nti_src"] = Field(
        "nti",
        description="ddim: DDIM inversion (guidance 1) on e_opt; nti: Null-text inversion on e_opt; "
        "nti_src: Null-text inversion on the source prompt",
    )
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of inversion and sampling")
    nti_guidance: float = Field(7.5, ge=0, le=50, description="CFG scale the null embeddings are tuned for")
    nti_inner_steps: int = Field(10, ge=0, le=1000, description="Null-text optimisation steps per timestep")


class InjectionEditParams(Params):
    """What only changes the sampling."""

    src_ratio: float = Field(
        0.2, ge=0, le=1, description="fraction of the first steps conditioned on e_src (useful range 0.1-0.4)"
    )
    eta: float = Field(0.7, ge=0, le=2, description="after the switch: e = eta * e_tgt + (1 - eta) * e_opt")
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale while sampling (match nti_guidance under NTI)")


@register_method
class TimestepInjection(Method):
    """Imagic's text optimisation, latent inversion, and timestep-aware text injection sampling."""

    name = "timestep_injection"
    InvertParams = InjectionInvertParams
    EditParams = InjectionEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: InjectionInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents, optimized = optimize_target_embeddings(
            backbone, samples, generators, params.text_steps, params.text_lr
        )
        source = optimized
        if params.inversion == "nti_src":
            source = backbone.encode_text(source_prompts(samples)).float()
        schedule = make_schedule(backbone, params.steps)
        trajectory = ddim_invert(backbone, latents, schedule, source)
        state = {"latents": trajectory[-1], "source": source, "optimized": optimized}
        if params.inversion != "ddim":
            nti = NullTextParams(steps=params.steps, guidance=params.nti_guidance, inner_steps=params.nti_inner_steps)
            with torch.enable_grad():
                null = optimize_null_text(backbone, trajectory, source, schedule, nti)
            state["null_embeddings"] = null.transpose(0, 1).contiguous()  # batch-first (B, steps, L, D)
        return state

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: InjectionInvertParams,
        edit_params: Sequence[InjectionEditParams],
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
        invert_params: InjectionInvertParams,
        edit_params: Sequence[InjectionEditParams],
    ) -> torch.Tensor:
        """Edited clean latents (points x samples, C, h, w), every point in one denoising loop."""
        n_points, batch = len(edit_params), len(samples)
        device = backbone.device

        def per_row(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device).repeat_interleave(batch)

        schedule = make_schedule(backbone, invert_params.steps)
        x = state["latents"].float().repeat(n_points, 1, 1, 1)
        source = state["source"].float().repeat(n_points, 1, 1)
        optimized = state["optimized"].float().repeat(n_points, 1, 1)
        target = backbone.encode_text(target_prompts(samples)).float().repeat(n_points, 1, 1)
        eta = per_row([p.eta for p in edit_params]).view(-1, 1, 1)
        injected = eta * target + (1 - eta) * optimized
        switch = per_row([round(p.src_ratio * schedule.steps) for p in edit_params]).view(-1, 1, 1)
        guidance = per_row([p.guidance for p in edit_params])
        tuned = state.get("null_embeddings")
        null = backbone.encode_text([""]).float().expand(len(x), -1, -1)
        for i in range(schedule.steps):
            t, a_from, a_to = schedule.timesteps[i], schedule.alphas[i].item(), schedule.alphas[i + 1].item()
            cond = torch.where(i < switch, source, injected)
            uncond = tuned[:, i].float().repeat(n_points, 1, 1) if tuned is not None else null
            eps = predict_noise(backbone, x, t, cond, uncond, guidance, alpha=a_from)
            x = ddim_move(x, eps, a_from, a_to)
        return x
