"""EDICT: Exact Diffusion Inversion via Coupled Transformations (Wallace, Gokul, Naik 2023).

Two latent sequences x and y, equal to the input's latent at the start, denoise each other. One
DDIM step from noise level alpha_t to alpha_{t-1} (the paper's Eq. 14) is

    x_inter = a_t x_t + b_t eps(y_t, t)
    y_inter = a_t y_t + b_t eps(x_inter, t)
    x_{t-1} = p x_inter + (1 - p) y_inter
    y_{t-1} = p y_inter + (1 - p) x_{t-1}

with a_t = sqrt(alpha_{t-1} / alpha_t) and b_t = sqrt(1 - alpha_{t-1}) - a_t sqrt(1 - alpha_t) (the
DDIM step written as an affine map) and p the mixing coefficient (0.93). Each line is an affine map
of one sequence given the other, so running the lines backwards inverts the step exactly (Eq. 15):
the inversion holds up to floating-point rounding, where DDIM inversion approximates the noise at
x_t by the noise at the less noisy latent. The price: two noise predictions per step.

As the reference code (`salesforce/EDICT`, `edict_functions.py`, `coupled_stablediffusion`): the
sequence that moves first alternates from step to step (`leapfrog_steps`: x at even steps of the
sampling loop, y at odd ones; the inversion undoes them in the opposite order), the mixing always
goes x then y, and a partial inversion (`init_image_strength`) inverts the last
int(strength * steps) steps of the schedule, where sampling resumes. Deliberate differences: the
schedule is the backbone's (editsweep's DDIM schedule, diffusers' `DDIMScheduler` settings of the
model, where the reference builds its own with `steps_offset` 0, whose last step is the identity),
the latent is the VAE posterior's mean (the reference samples it), and only the coupled latents'
arithmetic is in float64 (the reference runs the whole model in float64): the UNet runs at the
backbone's dtype, and the exactness only needs it to answer the same input with the same noise.
diffusers ships no EDICT pipeline in its wheel (only a community example), so the tests check
these equations written out instead.

A pair is one tensor, x and y stacked on the channels (B, 2C, h, w): what an editor's loop carries
through `Inverted.sampler` (diffusion/inverted.py), so row operations (LocalBlend) act on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from pydantic import Field, model_validator

from editsweep.core.params import Params
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, predict_noise
from editsweep.diffusion.inverted import Denoise


class EDICTParams(Params):
    """EDICT inversion's settings (every one changes the inversion), with the paper's defaults."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the whole schedule")
    strength: float = Field(
        0.8, gt=0, le=1, description="fraction of the steps inverted, where editing resumes (init_image_strength)"
    )
    p: float = Field(0.93, gt=0, le=1, description="mixing coefficient of the coupled sequences (mix_weight)")
    source_guidance: float = Field(
        3.0, ge=0, le=50, description="CFG scale of the source prompt (inversion and source rows)"
    )
    leapfrog: bool = Field(True, description="alternate the sequence that moves first at every step (leapfrog_steps)")

    @model_validator(mode="after")
    def _a_step_inverted(self) -> EDICTParams:
        if int(self.steps * self.strength) < 1:
            raise ValueError(
                f"strength {self.strength} of {self.steps} steps inverts int({self.steps} * {self.strength}) = 0 "
                "steps; raise strength or steps"
            )
        return self


def ddim_coefficients(alpha_from: float, alpha_to: float) -> tuple[float, float]:
    """(a, b) of the DDIM step x_to = a x_from + b eps from alpha-bar `alpha_from` to `alpha_to`."""
    a = (alpha_to / alpha_from) ** 0.5
    return a, (1 - alpha_to) ** 0.5 - a * (1 - alpha_from) ** 0.5


def strength_start(steps: int, strength: float) -> int:
    """The sampling step a partial inversion of `strength` stops at, where editing resumes: the
    reference's t_limit = steps - int(steps * strength)."""
    return steps - int(steps * strength)


def moves_y_first(step: int, leapfrog: bool) -> bool:
    """Whether y moves before x at sampling step `step` (counted from the loop's first step)."""
    return leapfrog and step % 2 == 1


def coupled_step(
    x: torch.Tensor,
    y: torch.Tensor,
    denoise: Denoise,
    alpha_from: float,
    alpha_to: float,
    mix: float,
    y_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One EDICT denoising step of the pair: two noise predictions, then the mixing layers."""
    a, b = ddim_coefficients(alpha_from, alpha_to)
    first, second = (y, x) if y_first else (x, y)
    first = a * first + b * denoise(second)
    second = a * second + b * denoise(first)
    x, y = (second, first) if y_first else (first, second)
    x = mix * x + (1 - mix) * y
    y = mix * y + (1 - mix) * x
    return x, y


def coupled_step_inverse(
    x: torch.Tensor,
    y: torch.Tensor,
    denoise: Denoise,
    alpha_from: float,
    alpha_to: float,
    mix: float,
    y_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact inverse of `coupled_step` with the same arguments: the pair at `alpha_from` from
    the pair at `alpha_to`, the same two noise predictions evaluated on the same latents."""
    y = (y - (1 - mix) * x) / mix
    x = (x - (1 - mix) * y) / mix
    a, b = ddim_coefficients(alpha_from, alpha_to)
    first, second = (y, x) if y_first else (x, y)
    second = (second - b * denoise(first)) / a
    first = (first - b * denoise(second)) / a
    return (second, first) if y_first else (first, second)


def split_pair(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a pair stacked on the channels."""
    return state.chunk(2, dim=1)


@torch.no_grad()
def edict_invert(
    backbone: Backbone,
    latents: torch.Tensor,
    schedule: Schedule,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: float,
    mix: float,
    leapfrog: bool,
    start: int = 0,
) -> torch.Tensor:
    """EDICT inversion of clean latents up to `schedule.timesteps[start]`: the pair (B, 2C, h, w),
    float64, from which `CoupledSampler` on the schedule's steps from `start` on returns them."""
    x = y = latents.double()
    for i in reversed(range(start, schedule.steps)):
        alpha = schedule.alphas[i].item()
        denoise = partial(
            predict_noise, backbone, t=schedule.timesteps[i], cond=cond, uncond=uncond, guidance=guidance, alpha=alpha
        )
        y_first = moves_y_first(i - start, leapfrog)
        x, y = coupled_step_inverse(x, y, denoise, alpha, schedule.alphas[i + 1].item(), mix, y_first)
    return torch.cat([x, y], dim=1)


@dataclass(frozen=True)
class CoupledSampler:
    """EDICT's sampling step on a pair stacked on the channels, for an editor's loop (its step i
    counts from the first step of `schedule`); the latents to decode are the x sequence."""

    schedule: Schedule
    mix: float
    leapfrog: bool = True

    def __call__(self, i: int, state: torch.Tensor, denoise: Denoise) -> torch.Tensor:
        """The pair after step i; `denoise` runs twice, once on each sequence of every row."""
        x, y = split_pair(state.double())
        alphas = self.schedule.alphas
        y_first = moves_y_first(i, self.leapfrog)
        x, y = coupled_step(x, y, denoise, alphas[i].item(), alphas[i + 1].item(), self.mix, y_first)
        return torch.cat([x, y], dim=1)

    def latents(self, state: torch.Tensor) -> torch.Tensor:
        """The x sequence of the pair, as float32 latents (the reference decodes both; they agree
        closely, x is the one it returns first)."""
        return split_pair(state)[0].float()
