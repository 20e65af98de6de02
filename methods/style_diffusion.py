"""`style_diffusion`: StyleDiffusion (Li et al. 2023), prompt-embedding inversion into the value
input of the cross-attention, then P2Plus editing.

Inversion. The keys of every cross-attention layer keep the source prompt's embedding c; only the
value input changes, to v_t = c * a_t + b_t, where (a_t, b_t) = M_t(CLIP image tokens) and M_t is
one small mapping network per DDIM step (the official code's shape: 1x1 convolutions that mix the
encoder's tokens into 2 x 77 rows, with a batch-norm + LeakyReLU block in between; a last linear
map to the backbone's width when the encoder's differs). Like Null-text inversion, step by step
from the noisiest latent, M_t is trained so that the guided DDIM step from the current latent lands
on the DDIM inversion trajectory's next latent, plus an attention loss: the cross-attention maps
with the learned values must match those of the DDIM inversion at the same timestep (the layers
at latent / 4, 16x16 on SD). M_t starts from M_{t-1}; inner iterations decay as
ceil(inner_steps * exp(-inner_decay * i)), the learning rate linearly, and an image stops early
below epsilon + 2e-5 * i, all as in the official code.

Every image has its own mapping network: its weights are batched tensors with a leading image
axis, applied with `torch.einsum`, and the per-image losses are summed, so each image gets the
gradient it would get alone. The batch norm normalises each image over its own features (what
`nn.BatchNorm1d` does in training mode with one image, as the official code trains). The state
holds the trained networks' outputs (a_t, b_t) per step, not the networks.

Editing (P2Plus): P2P on the conditional branch, plus self-attention replacement in the
unconditional branch during the first `uncond_self_replace` of the steps. Source rows use the
learned values at every step; target rows use c_target * a_t + b_t during the first
`value_replace` of the steps, then their own embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.attention import AttentionRecorder, controlled_unet
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, ddim_invert, ddim_move, make_schedule, predict_noise
from editsweep.diffusion.image_encoder import DEFAULT_IMAGE_ENCODER, load_image_encoder
from editsweep.diffusion.image_encoder import PRESETS as IMAGE_ENCODER_PRESETS
from editsweep.diffusion.inputs import images_tensor, source_prompts
from editsweep.diffusion.p2p import P2PlusParams, ValueInputs, attention_map_tokens, p2p_edit
from editsweep.methods.base import Method, Params, State, register_method

Mapping = dict[str, torch.Tensor]
"""Per-image mapping-network weights, each with a leading image axis."""


class StyleDiffusionParams(Params):
    """Everything here changes the inversion; the edit runs at `guidance` too."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale the values are trained for")
    inner_steps: int = Field(100, ge=0, le=10000, description="optimisation steps at the first timestep")
    inner_decay: float = Field(
        0.1, ge=0, le=10, description="inner steps at step i: ceil(inner_steps * exp(-inner_decay * i))"
    )
    learning_rate: float = Field(1e-2, gt=0, le=1, description="Adam lr at the first step, decayed linearly")
    lr_decay: float = Field(0.01, ge=0, lt=1, description="lr(i) = learning_rate * (1 - lr_decay * i)")
    attention_weight: float = Field(1.0, ge=0, le=1000, description="weight of the attention regularisation loss")
    epsilon: float = Field(1e-5, ge=0, description="early stop when loss < epsilon + 2e-5 * step")
    image_encoder: str = Field(
        DEFAULT_IMAGE_ENCODER, min_length=1, description="CLIP image encoder: Hub id, local folder, or tiny (random)"
    )


class StyleDiffusionEditParams(P2PlusParams):
    """P2Plus controls; defaults are the official recommendation (tau_v .5, tau_c .6, tau_s .6, tau_u 0)."""

    cross_replace: float = Field(0.6, ge=0, le=1, description="fraction of steps with injected cross-attention")
    self_replace: float = Field(0.6, ge=0, le=1, description="fraction of steps with injected self-attention")
    value_replace: float = Field(
        0.5, ge=0, le=1, description="fraction of steps in which target rows use the learned values"
    )


def init_mapping(
    n_tokens: int, width: int, dim: int, length: int, generators: Sequence[torch.Generator], device: torch.device
) -> Mapping:
    """Fresh per-image mapping weights, drawn from each image's generator like PyTorch's default
    Conv1d/Linear init (uniform within 1 / sqrt(fan_in)); the projection exists when width != dim."""
    rows = 2 * length

    def uniform(g: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        return (torch.rand(shape, generator=g, device=g.device) * 2 - 1) / fan_in**0.5

    shapes = {
        "start_w": ((rows, n_tokens), n_tokens),
        "start_b": ((rows,), n_tokens),
        "block_w": ((rows, rows), rows),
        "block_b": ((rows,), rows),
        "end_w": ((rows, rows), rows),
        "end_b": ((rows,), rows),
    }
    if width != dim:
        shapes.update(proj_w=((width, dim), width), proj_b=((dim,), width))
    mapping = {
        name: torch.stack([uniform(g, shape, fan_in) for g in generators]).to(device)
        for name, (shape, fan_in) in shapes.items()
    }
    mapping["norm_scale"] = torch.ones(len(generators), rows, device=device)
    mapping["norm_shift"] = torch.zeros(len(generators), rows, device=device)
    return mapping


def apply_mapping(mapping: Mapping, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (B, L, D), from image tokens (B, N, W) through each image's own network."""
    h = torch.einsum("brn,bnw->brw", mapping["start_w"], tokens) + mapping["start_b"][..., None]
    h = torch.einsum("brs,bsw->brw", mapping["block_w"], h) + mapping["block_b"][..., None]
    mean = h.mean(-1, keepdim=True)
    var = h.var(-1, unbiased=False, keepdim=True)
    h = (h - mean) / (var + 1e-5).sqrt() * mapping["norm_scale"][..., None] + mapping["norm_shift"][..., None]
    h = F.leaky_relu(h)
    h = torch.einsum("brs,bsw->brw", mapping["end_w"], h) + mapping["end_b"][..., None]
    if "proj_w" in mapping:
        h = torch.einsum("brw,bwd->brd", h, mapping["proj_w"]) + mapping["proj_b"][:, None]
    return h.chunk(2, dim=1)


def inversion_maps(
    backbone: Backbone, latents: torch.Tensor, schedule: Schedule, cond: torch.Tensor
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """DDIM inversion (guidance 1) and its cross-attention maps: (trajectory, maps[i][layer])
    where i indexes the schedule's steps (the maps at `schedule.timesteps[i]`)."""
    recorder = AttentionRecorder(attention_map_tokens(backbone))
    with controlled_unet(backbone.unet, recorder):
        trajectory = ddim_invert(backbone, latents, schedule, cond)
    calls = recorder.take()
    per_call = len(calls) // schedule.steps
    by_call = [calls[k * per_call : (k + 1) * per_call] for k in range(schedule.steps)]
    return trajectory, by_call[::-1]  # inversion walks the schedule backwards


def train_values(
    backbone: Backbone,
    tokens: torch.Tensor,
    trajectory: torch.Tensor,
    target_maps: list[list[torch.Tensor]],
    cond: torch.Tensor,
    schedule: Schedule,
    params: StyleDiffusionParams,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train each image's per-step mapping along the inversion trajectory; returns the trained
    networks' outputs (scale, shift), each (B, steps, L, D)."""
    batch, length, dim = cond.shape
    cond = cond.float()
    uncond = backbone.encode_text([""] * batch).float()
    weights = init_mapping(tokens.shape[1], tokens.shape[2], dim, length, generators, cond.device)
    recorder = AttentionRecorder(attention_map_tokens(backbone))
    x = trajectory[-1].float()
    scales, shifts = [], []
    with controlled_unet(backbone.unet, recorder):
        for i in range(schedule.steps):
            t = schedule.timesteps[i]
            a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
            pivot = trajectory[schedule.steps - i - 1].float()
            with torch.no_grad():
                eps_uncond = predict_noise(backbone, x, t, uncond, alpha=a_from)
            recorder.take()
            weights = {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}
            optimizer = torch.optim.Adam(weights.values(), lr=params.learning_rate * (1 - params.lr_decay * i))
            done = torch.zeros(batch, dtype=torch.bool, device=x.device)
            for _ in range(math.ceil(params.inner_steps * math.exp(-params.inner_decay * i))):
                scale, shift = apply_mapping(weights, tokens)
                eps_cond = predict_noise(backbone, x, t, cond, alpha=a_from, values=cond * scale + shift)
                eps = eps_uncond + params.guidance * (eps_cond - eps_uncond)
                losses = ((ddim_move(x, eps, a_from, a_to) - pivot) ** 2).flatten(1).mean(1)
                for found, wanted in zip(recorder.take(), target_maps[i]):
                    attention_error = ((found.float() - wanted.float()) ** 2).flatten(1).mean(1)
                    losses = losses + params.attention_weight * attention_error
                before = {k: v.detach().clone() for k, v in weights.items()}
                optimizer.zero_grad()
                losses.sum().backward()
                optimizer.step()
                with torch.no_grad():
                    for k, v in weights.items():  # images that stopped early stay where they stopped
                        v[done] = before[k][done]
                done |= losses.detach() < params.epsilon + 2e-5 * i
                if bool(done.all()):
                    break
            with torch.no_grad():
                scale, shift = apply_mapping(weights, tokens)
                values = cond * scale + shift
                eps = predict_noise(backbone, x, t, cond, uncond, params.guidance, alpha=a_from, values=values)
                x = ddim_move(x, eps, a_from, a_to)
            recorder.take()
            scales.append(scale.detach())
            shifts.append(shift.detach())
    return torch.stack(scales, 1), torch.stack(shifts, 1)


def value_inputs(state: State, points: Sequence[StyleDiffusionEditParams], steps: int) -> ValueInputs:
    """The value inputs of the rows [sources; points x sources] at each step: learned
    (c * a_t + b_t) for the sources always, for a point's rows during its `value_replace` steps."""
    scale, shift = state["value_scale"].float(), state["value_shift"].float()
    batch = scale.shape[0]
    limits = [steps] * batch + [int(p.value_replace * steps) for p in points for _ in range(batch)]
    limits = torch.tensor(limits, device=scale.device)

    def values(step: int, cond: torch.Tensor) -> torch.Tensor:
        if cond.shape[0] != len(limits):
            raise ValueError(f"{cond.shape[0]} conditional rows, expected {len(limits)} (sources + points x sources)")
        rows = len(limits) // batch
        learned = cond.float() * scale[:, step].repeat(rows, 1, 1) + shift[:, step].repeat(rows, 1, 1)
        return torch.where((step < limits).view(-1, 1, 1), learned, cond.float())

    return values


@register_method
class StyleDiffusion(Method):
    """StyleDiffusion value inversion with a per-step mapping network, then P2Plus editing."""

    name = "style_diffusion"
    InvertParams = StyleDiffusionParams
    EditParams = StyleDiffusionEditParams

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """The CLIP image encoder (`tiny`: seeded random weights)."""
        name = invert_params.image_encoder
        return {"image_encoder": f"{name}:random" if name in IMAGE_ENCODER_PRESETS else name}

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: StyleDiffusionParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        if params.lr_decay * (params.steps - 1) >= 1:
            raise ValueError(
                f"lr_decay {params.lr_decay} makes the learning rate reach 0 before step {params.steps}: "
                f"use lr_decay < {1 / max(params.steps - 1, 1):.4g} for {params.steps} steps"
            )
        encoder = load_image_encoder(params.image_encoder, backbone.device)
        tokens = encoder.tokens([s.image for s in samples])
        schedule = make_schedule(backbone, params.steps)
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        cond = backbone.encode_text(source_prompts(samples))
        trajectory, target_maps = inversion_maps(backbone, latents, schedule, cond)
        with torch.enable_grad():
            scale, shift = train_values(backbone, tokens, trajectory, target_maps, cond, schedule, params, generators)
        return {"noise_latents": trajectory[-1], "value_scale": scale, "value_shift": shift}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: StyleDiffusionParams,
        edit_params: Sequence[StyleDiffusionEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        schedule = make_schedule(backbone, invert_params.steps)
        values = value_inputs(state, edit_params, schedule.steps)
        uncond = backbone.encode_text([""] * len(samples))
        # One guidance for every point: p2p_edit runs them in one loop, in order, as `values` assumes.
        return p2p_edit(
            backbone,
            samples,
            edit_params,
            state["noise_latents"],
            schedule,
            uncond,
            guidance=invert_params.guidance,
            values=values,
        )
