"""`flowedit` (Kulikov et al. 2025, "FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained
Flow Models"): an ODE between the source and the target image, driven by the difference of the
target and source velocities, without inverting the image.

Starting from z_edit = x_src at noise level sigma_{T - n_max}, each step draws fresh noise n,
forms z_src = (1 - sigma) x_src + sigma n and z_tar = z_edit + z_src - x_src, and moves
z_edit += (sigma' - sigma) * mean over n_avg draws of [V(z_tar, target) - V(z_src, source)]
(paper, Alg. 1). The last n_min steps are plain sampling from the target (SDEdit-like). Velocities
are the backbone's (diffusion/flow.py `predict_velocity`): classifier-free guidance on SD3,
the guidance embedding on FLUX.1-dev, as in the paper's code.

The paper's defaults differ per family (its SD3_exp.yaml / FLUX_exp.yaml): SD3 T=50, n_max=33,
guidance 3.5 -> 13.5; FLUX T=28, n_max=24, guidance 1.5 -> 5.5; both n_min=0, n_avg=1. Parameters
left unset take the backbone family's default. With the target prompt equal to the source prompt
and equal guidance scales the velocity difference is 0 and the output is the input's latent,
i.e. the VAE round trip (tests/methods/test_flowedit.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, model_validator

from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import FlowBackbone, FlowText
from editsweep.diffusion.inputs import forked, source_prompts, target_prompts
from editsweep.methods.base import EncodesInput, Params, State, register_method

# The paper's settings per backbone family: (steps, n_max, source guidance, target guidance).
PAPER_DEFAULTS = {"sd3": (50, 33, 3.5, 13.5), "flux": (28, 24, 1.5, 5.5)}


class FlowEditParams(Params):
    """FlowEdit's knobs; None takes the backbone family's paper default (PAPER_DEFAULTS)."""

    steps: int | None = Field(None, ge=1, le=1000, description="T: Euler steps of the full schedule (SD3 50, FLUX 28)")
    n_max: int | None = Field(
        None, ge=1, le=1000, description="steps edited, counted from the end (SD3 33, FLUX 24); sets the edit strength"
    )
    n_min: int = Field(0, ge=0, le=1000, description="last steps sampled from the target alone instead (paper: 0)")
    n_avg: int = Field(1, ge=1, le=64, description="noise draws averaged per step (paper: 1)")
    src_guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the source prompt (SD3 3.5, FLUX 1.5)"
    )
    tar_guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the target prompt (SD3 13.5, FLUX 5.5)"
    )

    @model_validator(mode="after")
    def _n_min_within_n_max(self) -> FlowEditParams:
        if self.n_max is not None and self.n_min > self.n_max:
            raise ValueError(f"n_min ({self.n_min}) must not exceed n_max ({self.n_max}): lower n_min or raise n_max")
        return self

    def resolved(self, family: str) -> tuple[int, int, float, float]:
        """(steps, n_max, src_guidance, tar_guidance) with the family's defaults filled in."""
        steps, n_max, src, tar = PAPER_DEFAULTS[family]
        return (
            self.steps or steps,
            self.n_max or n_max,
            src if self.src_guidance is None else self.src_guidance,
            tar if self.tar_guidance is None else self.tar_guidance,
        )


@register_method
class FlowEdit(EncodesInput):
    """Inversion-free editing of rectified-flow models by the target-source velocity difference."""

    name = "flowedit"
    families = ("sd3", "flux")
    EditParams = FlowEditParams

    def edit(
        self,
        backbone: FlowBackbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[FlowEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        x_src = state["latents"].float()
        batch = len(samples)
        src, tar = backbone.encode_text(source_prompts(samples)), backbone.encode_text(target_prompts(samples))
        negative = backbone.encode_text([""] * batch) if backbone.family == "sd3" else None
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        # Points that share a schedule go through one batched loop; each group draws the same noise.
        groups: dict[tuple[int, int, int, int], list[int]] = {}
        for k, p in enumerate(edit_params):
            steps, n_max, _, _ = p.resolved(backbone.family)
            if p.n_min > n_max:
                raise ValueError(f"n_min ({p.n_min}) exceeds this backbone's n_max ({n_max}): set n_max")
            groups.setdefault((steps, n_max, p.n_min, p.n_avg), []).append(k)
        for (steps, n_max, n_min, n_avg), indices in groups.items():
            guidance = [edit_params[k].resolved(backbone.family)[2:] for k in indices]
            g_src = torch.tensor([g[0] for g in guidance]).repeat_interleave(batch)
            g_tar = torch.tensor([g[1] for g in guidance]).repeat_interleave(batch)
            n = len(indices)
            latents = flowedit(
                backbone,
                x_src,
                backbone.sigmas(steps, x_src.shape[-1]),
                (src.repeat(n), tar.repeat(n), negative.repeat(n) if negative else None),
                (g_src, g_tar),
                (n_max, n_min, n_avg),
                forked(generators),
            )
            for k, images in zip(indices, backbone.decode(latents).split(batch)):
                results[k] = images
        return results


def flowedit(
    backbone: FlowBackbone,
    x_src: torch.Tensor,
    sigmas: torch.Tensor,
    texts: tuple[FlowText, FlowText, FlowText | None],
    guidance: tuple[torch.Tensor, torch.Tensor],
    schedule: tuple[int, int, int],
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """FlowEdit's ODE (paper Alg. 1) for B samples at P edit points at once: latents (P * B, C, h, w).

    `x_src` (B, C, h, w); `texts` = (source, target, negative or None) and `guidance` = (source,
    target) scales, each with P * B rows, point-major; `schedule` = (n_max, n_min, n_avg). Sample
    b draws its noise from `generators[b]`, shared by the P points.
    """
    src, tar, negative = texts
    g_src, g_tar = guidance
    n_max, n_min, n_avg = schedule
    steps = len(sigmas) - 1
    points = src.embeds.shape[0] // x_src.shape[0]
    x0 = x_src.float().repeat(points, 1, 1, 1)

    def noise() -> torch.Tensor:
        draws = [torch.randn(x_src.shape[1:], generator=g, device=g.device) for g in generators]
        return torch.stack(draws).to(x0.device).repeat(points, 1, 1, 1)

    # Source and target velocities in one model call per step, as the paper's code does.
    both = FlowText.cat([src, tar])
    both_negative = FlowText.cat([negative, negative]) if negative is not None else None
    both_guidance = torch.cat([g_src, g_tar])
    z_edit, x_tar = x0.clone(), None
    for i in range(max(0, steps - n_max), steps):
        sigma, step = sigmas[i], sigmas[i + 1] - sigmas[i]
        if steps - i > n_min:
            delta = torch.zeros_like(x0)
            for _ in range(n_avg):
                z_src = (1 - sigma) * x0 + sigma * noise()
                z_tar = z_edit + z_src - x0
                v = backbone.predict_velocity(torch.cat([z_src, z_tar]), sigma, both, both_guidance, both_negative)
                v_src, v_tar = v.chunk(2)
                delta += (v_tar - v_src) / n_avg
            z_edit = z_edit + step * delta
        else:  # the last n_min steps: plain sampling from the target, from the edit noised to sigma
            if x_tar is None:
                x_tar = z_edit + sigma * (noise() - x0)
            x_tar = x_tar + step * backbone.predict_velocity(x_tar, sigma, tar, g_tar, negative)
    return z_edit if x_tar is None else x_tar
