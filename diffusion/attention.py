"""Prompt-to-Prompt attention control (Hertz et al. 2022), batch-first and sweep-aware.

The denoising batch holds source rows (one per sample: the reconstruction branch) and target rows
(one per sample and edit point). Every target row names its source row and carries its own
controls, so a whole grid of P2P settings runs through one UNet call per step:

- cross-attention: from step `cross_from` to `cross_steps` (per row, or per row and token for
  per-word schedules) a target row's maps are its source's maps rearranged to its own tokens (word
  swap or refinement mapper, `prompt_alignment`), then multiplied by a per-token equalizer
  (re-weighting);
- self-attention: from step `self_from` to `self_steps`, on layers of at most `SELF_MAX_TOKENS`
  queries, a target row's maps are its source's;
- LocalBlend: after each step, target latents outside a mask made from the cross-attention maps of
  the blended words, summed over the steps so far, keep the source latents.

Control applies to the conditional half of classifier-free guidance; `control_uncond` extends all
of it to the unconditional half, and `uncond_self_steps` only its self-attention replacement, with
its own step count (P2Plus, StyleDiffusion, Li et al. 2023). Maps are materialised only where a
processor of this module is installed; `controlled_unet` restores the UNet's own (SDPA)
processors afterwards.

The processor also takes the value input of the cross-attention separately from the key input
(`value_states`, passed through the UNet's `cross_attention_kwargs`): StyleDiffusion keeps the
prompt's embedding as keys and feeds a learned embedding as values. `AttentionRecorder` keeps the
cross-attention maps of chosen layers (with their gradient) instead of editing them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

# As the reference code (`replace_self_attention`: att_replace.shape[2] <= 32 ** 2): self-attention is
# replaced on layers of up to 32x32 queries (SD at 512 px: all but the 64x64 ones).
SELF_MAX_TOKENS = 32**2


@dataclass
class LocalBlend:
    """Per target row: the token positions of the blended word in the source and target prompts."""

    source_words: torch.Tensor  # (T, L) 0/1 over the source prompt's tokens
    target_words: torch.Tensor  # (T, L) 0/1 over the target prompt's tokens
    threshold: torch.Tensor  # (T,)
    start_step: torch.Tensor  # (T,) first step (counted from 0) at which blending acts
    map_tokens: int | None = None  # the query count of the layers whose maps make the mask
    total: torch.Tensor | None = None  # running sum of head-averaged maps (rows, queries, L)
    count: int = 0

    def collect(self, probs: torch.Tensor) -> None:
        """Add the head-averaged cross maps (rows, queries, L) of a mask layer to the running sum."""
        if self.map_tokens is None or probs.shape[2] == self.map_tokens:
            maps = probs.mean(1).float()
            self.total = maps if self.total is None else self.total + maps
            self.count += 1

    def mask(self, n_source: int, source_index: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        """The (T, 1, h, w) 0/1 blend mask: source word region united with target word region.

        As the reference code's LocalBlend, the maps are those of every step so far (its
        `attention_store` is a running sum over steps): the mean over layers and steps, whose
        scale the per-row normalisation by the maximum removes.
        """
        maps = self.total / self.count  # (rows, Q, L)
        side = int(maps.shape[1] ** 0.5)
        src = (maps[source_index] * self.source_words[:, None]).sum(-1)
        tgt = (maps[n_source:] * self.target_words[:, None]).sum(-1)
        masks = []
        for m in (src, tgt):
            m = F.max_pool2d(m.view(-1, 1, side, side), 3, stride=1, padding=1)
            m = F.interpolate(m, size=latent_hw, mode="nearest")
            m = m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            masks.append(m > self.threshold.view(-1, 1, 1, 1))
        return (masks[0] | masks[1]).float()


@dataclass
class P2PControl:
    """Prompt-to-Prompt controls for a batch laid out as [sources (S rows); targets (T rows)]."""

    n_source: int
    source_index: torch.Tensor  # (T,) long: the source row of each target row
    mapper: torch.Tensor  # (T, L, L)
    alphas: torch.Tensor  # (T, L)
    equalizer: torch.Tensor  # (T, L)
    cross_steps: torch.Tensor  # (T,) or (T, L) long: the step at which cross-attention replacement ends
    self_steps: torch.Tensor  # (T,) long: the step at which self-attention replacement ends
    control_uncond: bool = False
    uncond_self_steps: torch.Tensor | None = None  # (T,) long: P2Plus; control_uncond takes precedence
    blend: LocalBlend | None = None
    cross_from: torch.Tensor | None = None  # like cross_steps: the step it starts at (None: 0)
    self_from: torch.Tensor | None = None  # (T,) long: the step self-attention replacement starts at (None: 0)
    step: int = 0

    def __call__(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """Edit attention probabilities (batch, heads, queries, keys) of one layer."""
        rows = self.n_source + len(self.source_index)
        halves = probs.shape[0] // rows
        if halves * rows != probs.shape[0]:
            raise ValueError(f"attention batch {probs.shape[0]} is not a multiple of the {rows} controlled rows")
        controlled = range(halves) if self.control_uncond else [halves - 1]
        out = list(probs.split(rows))
        for h in controlled:
            out[h] = self._edit(out[h], is_cross, self.self_steps, self.self_from)
        if self.uncond_self_steps is not None and halves > 1 and not self.control_uncond and not is_cross:
            out[0] = self._edit(out[0], is_cross, self.uncond_self_steps, None)
        if self.blend is not None and is_cross:
            self.blend.collect(out[-1])
        return torch.cat(out)

    def _edit(
        self, probs: torch.Tensor, is_cross: bool, self_steps: torch.Tensor, self_from: torch.Tensor | None
    ) -> torch.Tensor:
        source, target = probs[: self.n_source], probs[self.n_source :]
        base = source[self.source_index]
        if is_cross:
            mapped = torch.einsum("thqi,tij->thqj", base, self.mapper.to(probs.dtype))
            alphas = self.alphas.to(probs.dtype)[:, None, None, :]
            mapped = mapped * alphas + target * (1 - alphas)
            mapped = mapped * self.equalizer.to(probs.dtype)[:, None, None, :]
            active = _window(self.step, self.cross_from, self.cross_steps)
        else:
            if probs.shape[2] > SELF_MAX_TOKENS:
                return probs
            mapped = base
            active = _window(self.step, self_from, self_steps)
        shape = (-1, 1, 1, active.shape[1]) if active.dim() == 2 else (-1, 1, 1, 1)
        edited = torch.where(active.to(probs.device).view(shape), mapped, target)
        return torch.cat([source, edited])


def _window(step: int, start: torch.Tensor | None, end: torch.Tensor) -> torch.Tensor:
    """Where start <= step < end (start None: 0)."""
    active = step < end
    return active if start is None else active & (step >= start)


AttentionHook = Callable[[torch.Tensor, bool], torch.Tensor]
"""Edits or records one layer's attention probabilities (batch, heads, queries, keys); is_cross."""


@dataclass
class AttentionRecorder:
    """Keeps the per-head cross-attention maps of the layers with `map_tokens` queries (all when None).

    Maps keep their autograd graph, so a loss on them (StyleDiffusion's attention regularisation)
    reaches whatever produced them; `take` hands over and forgets the maps of the calls so far.
    """

    map_tokens: int | None = None
    maps: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        if is_cross and (self.map_tokens is None or probs.shape[2] == self.map_tokens):
            self.maps.append(probs)
        return probs

    def take(self) -> list[torch.Tensor]:
        """The maps recorded since the last call, in layer order."""
        maps, self.maps = self.maps, []
        return maps


class P2PAttnProcessor:
    """An attention processor that materialises the maps and lets a hook (`P2PControl`,
    `AttentionRecorder`) edit or record them; cross-attention values come from `value_states`
    when given (rows as the encoder states), else from the encoder states."""

    def __init__(self, control: AttentionHook) -> None:
        self.control = control

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        value_states: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        batch, _, _ = hidden_states.shape
        context = encoder_hidden_states if is_cross else hidden_states
        value_context = context
        if is_cross and value_states is not None:
            if value_states.shape != context.shape:
                raise ValueError(
                    f"value_states {tuple(value_states.shape)} must have the shape of the encoder states "
                    f"{tuple(context.shape)}: one value embedding per UNet batch row"
                )
            value_context = value_states.to(context.dtype)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
            value_context = attn.norm_encoder_hidden_states(value_context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(value_context))
        mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
        probs = attn.get_attention_scores(query, key, mask)
        probs = self.control(probs.view(batch, attn.heads, *probs.shape[1:]), is_cross)
        out = attn.batch_to_head_dim(torch.bmm(probs.flatten(0, 1), value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def controlled_unet(unet: UNet2DConditionModel, control: AttentionHook) -> Iterator[None]:
    """Install P2P processors (with `control` as their hook) on every attention layer of the UNet
    for the duration of a block."""
    original = unet.attn_processors
    unet.set_attn_processor(P2PAttnProcessor(control))
    try:
        yield
    finally:
        unet.set_attn_processor(original)
