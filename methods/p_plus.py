"""`p_plus`: P+ / Extended Textual Inversion (XTI) (Voynov, Chu, Cohen-Or, Aberman 2023, "P+: Extended
Textual Conditioning in Text-to-Image Generation"), as an editor of one input image.

Inversion (`invert`): the input is inverted into the extended textual space P+: one learned token
per cross-attention layer of the UNet (16 on SD 1.x), each initialised with the embedding of the
sample's object word and optimised with the diffusion denoising loss on the input under the prompt
`template` ("a photo of a {}") in which the placeholder token stands for the object; layer i's
prompt holds token i (`diffusion/per_layer.py`: per-layer cross-attention processors, the token
inserted at the text encoder's embedding lookup, weights untouched). The UNet and text encoder
stay frozen. `per_layer: false` is plain textual inversion (Gal et al. 2023): one token shared by
every layer, the baseline the paper compares with. Adam, learning rate 5e-3, 500 steps (the paper's
XTI budget, a tenth of textual inversion's 5000).

Editing (`edit`): the target prompt with the object word replaced by the learned token(s), per
layer: `target_layers` read it (all, or only the coarse / fine layers: the paper's finding that the
coarse layers set the content and the fine ones the appearance) and the others read the inversion
prompt, so the learned appearance or shape can be kept while the prompt changes the rest (the
paper's per-layer mixing). DDIM with classifier-free guidance (empty prompt) from noise as the paper
generates (`strength` 1), or from the input noised to `strength` for an SDEdit-like trade-off.

The object word comes from `meta["object_word"]`, the `object_word` parameter, or the last content
word the source and target prompts share (`diffusion/masks.py` `object_word`); it must occur in the
target prompt. The paper trains with batch 8 over augmented views of 3-5 images; with one input, one
noise and timestep draw per step from the sample's generator is used here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, field_validator

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import ddim_sample, encoding_start, make_schedule
from editsweep.diffusion.finetuning import denoising_losses, draw_noise
from editsweep.diffusion.inputs import forked
from editsweep.diffusion.masks import MaskError, object_word
from editsweep.diffusion.per_layer import coarse_layers, cross_attention_layers, inserted_token, per_layer_conditioning
from editsweep.methods.base import EncodesInput, Params, State, register_method


class PPlusInvertParams(Params):
    """The inversion into P+: the placeholder, the prompt it is learned in, and the optimisation."""

    placeholder: str = Field("sks", min_length=1, description="one token of the tokenizer; its embedding is replaced")
    template: str = Field("a photo of a {}", description="the inversion prompt; {} is the placeholder")
    object_word: str | None = Field(None, description="initialiser and the target prompt's word the token replaces")
    steps: int = Field(500, ge=0, le=20000, description="optimisation steps (the paper's XTI: 500)")
    learning_rate: float = Field(5e-3, gt=0, le=1, description="Adam learning rate of the token embeddings")
    per_layer: bool = Field(True, description="one token per cross-attention layer (P+); false: textual inversion")

    @field_validator("template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError(f"template must hold exactly one '{{}}' for the placeholder token (got {value!r})")
        return value


class PPlusEditParams(Params):
    """The edit: which layers read the target prompt, and the sampling."""

    target_layers: Literal["all", "coarse", "fine"] = Field(
        "all", description="layers reading the target prompt; the others read the inversion prompt"
    )
    guidance: float = Field(7.5, ge=0, le=50, description="classifier-free guidance scale")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    strength: float = Field(1.0, gt=0, le=1, description="1: from noise (the paper); below: from the noised input")


def placeholder_id(backbone: Backbone, placeholder: str) -> int:
    """The placeholder's token id; a ValueError naming it when it is not exactly one token."""
    ids = backbone.tokenizer(placeholder, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(
            f"p_plus placeholder {placeholder!r} is {len(ids)} tokens for this backbone's tokenizer; "
            "use a word that is one token (the default 'sks')"
        )
    return ids[0]


def replace_word(prompt: str, word: str, token: str) -> str | None:
    """`prompt` with each whole-word occurrence of `word` replaced by `token`, or None if it has none."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE)
    replaced, count = pattern.subn(token, prompt)
    return replaced if count else None


def sample_words(samples: Sequence[Sample], configured: str | None) -> list[str]:
    """Each sample's object word, checked to occur in its target prompt."""
    words = []
    for s in samples:
        try:
            word = object_word(s, configured)
        except MaskError as exc:
            raise ValueError(f"p_plus: {exc}".replace("for its mask ", "")) from exc
        if replace_word(s.target_prompt, word, "") is None:
            raise ValueError(
                f"p_plus: sample {s.id!r}: the object word {word!r} is not in its target prompt {s.target_prompt!r}; "
                "the learned token replaces it there (set `object_word`, or give meta['object_word'])"
            )
        words.append(word)
    return words


def token_ids(backbone: Backbone, prompts: Sequence[str]) -> torch.Tensor:
    """(N, 77) token ids, padded as `Backbone.encode_text` pads, where the text encoder is (the CPU
    when it is offloaded, diffusion/memory.py)."""
    return backbone.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=backbone.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(backbone.text_encoder.device)


def layer_states(backbone: Backbone, prompts: Sequence[str], tokens: torch.Tensor, token: int) -> torch.Tensor:
    """(B, L, 77, D) encoder states: row b's prompt encoded with `tokens[b, v]` (tokens (B, V, d),
    V = L or 1) as the placeholder's embedding, for layer v (V = 1: one encoding for every layer).
    Differentiable in `tokens`."""
    batch, variants = tokens.shape[:2]
    layers = len(cross_attention_layers(backbone.unet))
    ids = token_ids(backbone, prompts).repeat_interleave(variants, dim=0)
    with inserted_token(backbone.text_encoder, token) as holder:
        holder.vectors = tokens.flatten(0, 1).to(ids.device)
        states = backbone.text_encoder(ids)[0].float().to(backbone.device)
    return states.view(batch, variants, *states.shape[1:]).expand(batch, layers, *states.shape[1:])


def invert_tokens(
    backbone: Backbone,
    latents: torch.Tensor,
    init: torch.Tensor,
    prompts: Sequence[str],
    token: int,
    generators: Sequence[torch.Generator],
    steps: int,
    learning_rate: float,
) -> tuple[torch.Tensor, list[float]]:
    """Textual inversion in P+: tokens (B, V, d) from `init` by Adam on the denoising loss of
    `latents` under `prompts` (the placeholder's layer-v embedding = token v), UNet and text encoder
    frozen; a batch minimises the sum of its per-image losses. Returns the tokens and each step's loss."""
    tokens = init.detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([tokens], lr=learning_rate)
    losses = []
    with torch.enable_grad(), per_layer_conditioning(backbone.unet) as states:
        for _ in range(steps):
            states.cond = layer_states(backbone, prompts, tokens, token)
            loss = denoising_losses(backbone, latents, states.cond[:, 0], generators).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return tokens.detach(), losses


@register_method
class PPlus(EncodesInput):
    """Invert the input into one token per cross-attention layer, then edit with per-layer prompts."""

    name = "p_plus"
    InvertParams = PPlusInvertParams
    EditParams = PPlusEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: PPlusInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        token = placeholder_id(backbone, params.placeholder)
        words = sample_words(samples, params.object_word)
        latents = super().invert(backbone, samples, params, generators, seeds)["latents"]
        table = backbone.text_encoder.get_input_embeddings().weight
        first = [backbone.tokenizer(w, add_special_tokens=False).input_ids[0] for w in words]
        variants = len(cross_attention_layers(backbone.unet)) if params.per_layer else 1
        init = table[torch.tensor(first, device=table.device)].float()[:, None].repeat(1, variants, 1)
        prompts = [params.template.format(params.placeholder)] * len(samples)
        tokens, _ = invert_tokens(
            backbone, latents, init, prompts, token, generators, params.steps, params.learning_rate
        )
        return {"latents": latents, "tokens": tokens}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: PPlusInvertParams,
        edit_params: Sequence[PPlusEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        clean, tokens = state["latents"].float(), state["tokens"]
        batch = len(samples)
        token = placeholder_id(backbone, invert_params.placeholder)
        words = sample_words(samples, invert_params.object_word)
        placeholder = invert_params.placeholder
        edited = [replace_word(s.target_prompt, w, placeholder) for s, w in zip(samples, words, strict=True)]
        with torch.no_grad():
            target = layer_states(backbone, edited, tokens, token)
            inversion = layer_states(backbone, [invert_params.template.format(placeholder)] * batch, tokens, token)
            uncond = backbone.encode_text([""] * batch).float()
        coarse = torch.tensor(coarse_layers(backbone.unet), device=clean.device)
        reads_target = {"all": torch.ones_like(coarse), "coarse": coarse, "fine": ~coarse}

        groups: dict[tuple[int, int, bool], list[int]] = {}
        for k, p in enumerate(edit_params):
            groups.setdefault((p.steps, encoding_start(p.steps, p.strength), p.strength == 1), []).append(k)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for (steps, start, from_noise), indices in groups.items():
            schedule = make_schedule(backbone, steps)
            noise = draw_noise(forked(generators), clean.shape[1:], clean.device)
            alpha = schedule.alphas[start].item()
            x = noise if from_noise else alpha**0.5 * clean + (1 - alpha) ** 0.5 * noise
            cond = torch.cat(
                [
                    torch.where(reads_target[edit_params[k].target_layers].view(1, -1, 1, 1), target, inversion)
                    for k in indices
                ]
            )
            guidance = torch.tensor([edit_params[k].guidance for k in indices], device=clean.device)
            with per_layer_conditioning(backbone.unet) as states:
                states.cond = cond
                states.uncond = uncond[:, None].expand_as(target).repeat(len(indices), 1, 1, 1)
                latents = ddim_sample(
                    backbone,
                    x.repeat(len(indices), 1, 1, 1),
                    schedule,
                    cond[:, 0],
                    states.uncond[:, 0],
                    guidance.repeat_interleave(batch),
                    start=start,
                )
            for k, images in zip(indices, backbone.decode(latents).split(batch), strict=True):
                results[k] = images
        return results
