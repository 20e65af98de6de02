"""Flow-matching backbones: Stable Diffusion 3/3.5 and FLUX.1, through diffusers' own classes.

A `FlowBackbone` wraps the family's diffusers pipeline (`StableDiffusion3Pipeline`, `FluxPipeline`)
and gives methods one small interface: `encode_text`, `encode_images`, `decode`, `sigmas` and
`predict_velocity`, with latents always batch-first and unpacked, (B, C, h, w). Prompt encoding,
FLUX's latent packing and its latent image ids are the pipelines' own functions, so that our
sampling (`flow_sample`) follows the pipelines step for step (tests/diffusion/test_flow.py compares
them on the same tiny weights).

Both families are rectified flows (Esser et al. 2024, "Scaling Rectified Flow Transformers"):
x_sigma = (1 - sigma) x_0 + sigma * noise, and the model predicts the velocity v = noise - x_0,
so an Euler step from sigma to sigma' is x + (sigma' - sigma) v.

Presets of seeded random weights, built offline from small configs:
- `tiny-sd3`: an SD3Transformer2DModel with two CLIP text encoders (with projection) and a T5
  encoder, 64 px images, 16-channel latents of 8x8;
- `tiny-flux`: a FluxTransformer2DModel with guidance embedding (like FLUX.1-dev), CLIP + T5.
No T5 sentencepiece tokenizer is available offline here (no `sentencepiece`, no cached tokenizer),
so the tiny presets tokenize the T5 prompt with the project's CLIP BPE tokenizer
(diffusion/backbone.py: `clip_bpe_tokenizer`), its ids taken as ids of the tiny T5's vocabulary
(49,408 entries). Real checkpoints use their own T5 tokenizer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from pydantic import Field
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from editsweep.core.hub import hf_cache_dir, hf_offline, load_cache_first
from editsweep.core.params import Params
from editsweep.diffusion.backbone import (
    BackboneLoadError,
    _missing_message,
    _seeded,
    clip_bpe_tokenizer,
)

FLOW_FAMILIES = ("sd3", "flux")
FLOW_PRESETS = {"tiny-sd3": "sd3", "tiny-flux": "flux", "sd3-arch": "sd3", "flux-arch": "flux"}
ARCH_PRESETS = ("sd3-arch", "flux-arch")
# Families of Hub ids known without loading them (spec validation uses it; see `family_of`).
KNOWN_FLOW_IDS = {
    "stabilityai/stable-diffusion-3-medium-diffusers": "sd3",
    "stabilityai/stable-diffusion-3.5-medium": "sd3",
    "stabilityai/stable-diffusion-3.5-large": "sd3",
    "stabilityai/stable-diffusion-3.5-large-turbo": "sd3",
    "black-forest-labs/FLUX.1-dev": "flux",
    "black-forest-labs/FLUX.1-schnell": "flux",
    "black-forest-labs/FLUX.1-Kontext-dev": "flux",  # FluxKontextPipeline: a FLUX.1-dev-shaped transformer
}
# model_index.json `_class_name` prefix -> family, for local folders.
PIPELINE_FAMILIES = {"StableDiffusion3": "sd3", "Flux": "flux", "StableDiffusionXL": "sdxl"}
PIPELINE_FAMILIES["QwenImageEditPipeline"] = "qwen-image"  # not QwenImageEditPlusPipeline (diffusion/qwen_image.py)
PIPELINES = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}
# The T5 prompt length each family's pipeline uses by default (FLUX.1-schnell was trained with 256);
# the tiny presets use a short one.
MAX_SEQUENCE_LENGTH = {"sd3": 256, "flux": 512, "tiny": 32}


def folder_family(folder: Path) -> str | None:
    """The family ('sd', 'sdxl', 'sd3', 'flux', 'qwen-image') of a local diffusers folder by its model_index.json, or None."""
    index = folder / "model_index.json"
    if not index.exists():
        return None
    name = str(json.loads(index.read_text()).get("_class_name", ""))
    for prefix, family in PIPELINE_FAMILIES.items():
        if name.startswith(prefix):
            return family
    return "sd" if name.startswith("StableDiffusion") and "XL" not in name else None


def hub_family(repo_id: str) -> str | None:
    """The family of a Hub id that no table knows, from its model_index.json (the local cache first,
    then the Hub unless offline), or None when it cannot be read: decided when the worker loads it."""
    from huggingface_hub import hf_hub_download

    for local_only in (True, False) if not hf_offline() else (True,):
        with contextlib.suppress(OSError, ValueError):
            path = hf_hub_download(repo_id, "model_index.json", cache_dir=hf_cache_dir(), local_files_only=local_only)
            return folder_family(Path(path).parent)
    return None


@dataclass
class FlowText:
    """Encoded prompts, batch-first: token embeddings (B, L, D) and pooled embeddings (B, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor

    def repeat(self, n: int) -> FlowText:
        """The batch repeated n times (point-major, like `torch.Tensor.repeat`)."""
        return FlowText(self.embeds.repeat(n, 1, 1), self.pooled.repeat(n, 1))

    @staticmethod
    def cat(texts: list[FlowText]) -> FlowText:
        """Batches concatenated in order."""
        return FlowText(torch.cat([t.embeds for t in texts]), torch.cat([t.pooled for t in texts]))


@dataclass
class FlowBackbone:
    """A flow-matching backbone (SD3 or FLUX) on one device: the family's diffusers pipeline."""

    name: str
    family: str
    pipe: StableDiffusion3Pipeline | FluxPipeline
    device: torch.device
    dtype: torch.dtype
    random_weights: bool
    max_sequence_length: int
    source: str = ""

    @property
    def vae(self) -> AutoencoderKL:
        """The pipeline's VAE."""
        return self.pipe.vae

    @property
    def transformer(self) -> SD3Transformer2DModel | FluxTransformer2DModel:
        """The pipeline's MMDiT."""
        return self.pipe.transformer

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Image side in pixels the transformer was built for (SD3) or the VAE's (FLUX)."""
        if self.family == "sd3":
            return int(self.transformer.config.sample_size) * self.vae_scale_factor
        return int(self.vae.config.sample_size)

    @property
    def weights_source(self) -> str:
        """Recorded in every row: where the backbone's weights came from."""
        return f"{self.name}:random" if self.random_weights else (self.source or self.name)

    @property
    def guidance_embedded(self) -> bool:
        """Whether guidance is an input of the model (FLUX.1-dev) rather than classifier-free (SD3)."""
        return bool(getattr(self.transformer.config, "guidance_embeds", False))

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> FlowText:
        """The pipeline's own prompt encoding: CLIP (pooled) and T5 token embeddings, on the device
        (computed where the text encoders are: the CPU when offloaded, diffusion/memory.py)."""
        kw = dict(device=self.pipe.text_encoder.device, max_sequence_length=self.max_sequence_length)
        if self.family == "sd3":
            embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False, **kw)
        else:
            embeds, pooled, _ = self.pipe.encode_prompt(prompts, None, **kw)
        return FlowText(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) of images (B, 3, H, W) in [0, 1]: the posterior mean, shifted and scaled."""
        x = images.to(self.device, self.dtype) * 2 - 1
        mean = self.vae.encode(x).latent_dist.mean
        return (mean - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32, from latents (B, C, h, w)."""
        z = latents.to(self.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return ((self.vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)

    def sigmas(self, steps: int, latent_side: int | None = None) -> torch.Tensor:
        """The `steps + 1` noise levels (1 -> 0) the family's pipeline samples with, float32 on the CPU.

        SD3 shifts a uniform grid by the scheduler's `shift`; FLUX shifts by mu, which depends on
        the number of image tokens (`latent_side` of the unpacked latent, default the backbone's).
        """
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        if self.family == "sd3":
            scheduler.set_timesteps(steps)
        else:
            side = latent_side or self.resolution // self.vae_scale_factor
            c = scheduler.config
            mu = calculate_shift((side // 2) ** 2, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return scheduler.sigmas.float().cpu()

    @torch.no_grad()
    def predict_velocity(
        self,
        latents: torch.Tensor,
        sigma: float | torch.Tensor,
        text: FlowText,
        guidance: torch.Tensor,
        negative: FlowText | None = None,
        true_cfg: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The velocity (B, C, h, w) at noise level `sigma`, guided by `guidance` (B,), float32.

        SD3: classifier-free guidance between `text` and `negative` (required when any guidance
        differs from 1). FLUX: guidance is the guidance embedding's input where the model has one
        (FLUX.1-dev); FLUX.1-schnell ignores it. With `negative`, FLUX adds FluxPipeline's "true"
        classifier-free guidance on top: two passes (one batched call), uncond + s (cond - uncond)
        with s = `true_cfg` (B,). `context` (B, C, h', w'), FLUX only: latents of images appended to
        the noisy tokens as FLUX.1 Kontext's conditioning (diffusion/flow.py `_flux`).
        """
        b = latents.shape[0]
        t = (torch.as_tensor(sigma, dtype=torch.float32) * 1000).expand(b).to(self.device)
        x = latents.to(self.device, self.dtype)
        guidance = guidance.to(self.device, torch.float32)
        if self.family == "sd3":
            if true_cfg is not None or context is not None:
                raise ValueError("SD3 takes its guidance scale in `guidance`; true_cfg and context are FLUX-only")
            if negative is None:
                if not torch.all(guidance == 1):
                    raise ValueError("SD3 guidance other than 1 needs the negative prompt's embeddings")
                return self._sd3(x, t, text).float()
            both = self._sd3(torch.cat([x, x]), torch.cat([t, t]), FlowText.cat([negative, text])).float()
            uncond, cond = both.chunk(2)
            return uncond + guidance.view(-1, 1, 1, 1) * (cond - uncond)
        if context is not None:
            context = context.to(self.device, self.dtype)
        if negative is None:
            if true_cfg is not None:
                raise ValueError("FLUX true_cfg needs the negative prompt's embeddings (`negative`)")
            return self._flux(x, t, text, guidance, context).float()
        if true_cfg is None:
            raise ValueError(
                "FLUX takes guidance through its guidance embedding; a negative prompt needs true_cfg scales (B,)"
            )
        double = torch.cat([context, context]) if context is not None else None
        both = self._flux(
            torch.cat([x, x]), torch.cat([t, t]), FlowText.cat([negative, text]), guidance.repeat(2), double
        ).float()
        uncond, cond = both.chunk(2)
        return uncond + true_cfg.to(self.device, torch.float32).view(-1, 1, 1, 1) * (cond - uncond)

    def _sd3(self, x: torch.Tensor, t: torch.Tensor, text: FlowText) -> torch.Tensor:
        return self.transformer(
            hidden_states=x,
            timestep=t.to(x.dtype),
            encoder_hidden_states=text.embeds,
            pooled_projections=text.pooled,
            return_dict=False,
        )[0]

    def _flux(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: FlowText,
        guidance: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """FluxPipeline's transformer call on packed latents. `context`: FluxKontextPipeline's image
        conditioning, its packed tokens appended after the noisy ones with position ids whose first
        coordinate is 1 (0 for the noisy tokens), and the output read on the noisy tokens only."""
        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, self.device, x.dtype)
        tokens = packed.shape[1]
        if context is not None:
            ch, cw = context.shape[2:]
            packed = torch.cat([packed, FluxPipeline._pack_latents(context, b, c, ch, cw)], dim=1)
            context_ids = FluxPipeline._prepare_latent_image_ids(b, ch // 2, cw // 2, self.device, x.dtype)
            context_ids[..., 0] = 1
            img_ids = torch.cat([img_ids, context_ids])
        txt_ids = torch.zeros(text.embeds.shape[1], 3, device=self.device, dtype=x.dtype)
        out = self.transformer(
            hidden_states=packed,
            timestep=t.to(x.dtype) / 1000,
            guidance=guidance if self.guidance_embedded else None,
            pooled_projections=text.pooled,
            encoder_hidden_states=text.embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return FluxPipeline._unpack_latents(
            out[:, :tokens], h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor
        )


def flow_sample(
    backbone: FlowBackbone,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None = None,
    start: int = 0,
    true_cfg: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler integration of the flow ODE from `sigmas[start]` down to `sigmas[-1]` (0), float32.

    The same update as diffusers' FlowMatchEulerDiscreteScheduler.step, x + (sigma' - sigma) v;
    `true_cfg` and `context` as in `FlowBackbone.predict_velocity` (FLUX).
    """
    x = latents.float()
    for i in range(start, len(sigmas) - 1):
        v = backbone.predict_velocity(x, sigmas[i], text, guidance, negative, true_cfg, context)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def euler_solve(
    backbone: FlowBackbone,
    x: torch.Tensor,
    path: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None,
    sharing: ValueSharing | None = None,
) -> torch.Tensor:
    """Euler integration along `path`, (sigma, sigma', editing step) triples, either way: the steps of
    `flow_sample` and `flow_invert` (the same arithmetic), with `sharing` switched to each step's
    model call, so that first-order inversion can save attention values for feature sharing."""
    for sigma, sigma_next, step in path:
        if sharing is not None:
            sharing.at(step, 0)
        x = x + (sigma_next - sigma) * backbone.predict_velocity(x, sigma, text, guidance, negative)
    return x


def flow_invert(
    backbone: FlowBackbone,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None = None,
    start: int = 0,
) -> torch.Tensor:
    """The inverse of `flow_sample`: Euler integration of the flow ODE from `sigmas[-1]` (0, the
    clean latents) up to `sigmas[start]`, float32, each step using the velocity at its lower end
    (the plain inversion RF-Inversion and RF-Solver start from, Rout et al. 2025, Wang et al. 2024).
    At guidance 1 on a smooth model, sampling from the result reconstructs the input closely."""
    x = latents.float()
    for i in range(len(sigmas) - 1, start, -1):
        v = backbone.predict_velocity(x, sigmas[i], text, guidance, negative)
        x = x + (sigmas[i - 1] - sigmas[i]) * v
    return x


class ValueSharing:
    """Saves (inversion) or substitutes (editing) the values of FLUX's single-stream attention blocks,
    keyed by the editing step they belong to, the solver call (0 or 1) and the block: the feature
    sharing of RF-Solver-Edit (Wang et al. 2025, Sec. 4.3) that FireFlow (Deng et al. 2025) keeps
    (methods/rf_solver.py, methods/fireflow.py)."""

    def __init__(self, values: dict[str, torch.Tensor], save: bool, steps: set[int]) -> None:
        self.values, self.save, self.steps = values, save, steps
        self.step: int | None = None
        self.call = 0

    def at(self, step: int | None, call: int) -> None:
        """The solver call the next model evaluation is (step None: one that is never shared)."""
        self.step, self.call = step, call

    def _key(self, block: int) -> str:
        return f"value.{self.step}.{self.call}.{block}"

    def hook(self, block: int):
        """A forward hook for `attn.to_v` of single-stream block `block`."""

        def run(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self.step not in self.steps:
                return None
            if self.save:
                self.values[self._key(block)] = output.detach().clone()
                return None
            saved = self.values[self._key(block)]
            return saved.repeat(output.shape[0] // saved.shape[0], 1, 1)

        return run


def value_modules(backbone: FlowBackbone) -> list[torch.nn.Module]:
    """The value projections whose outputs feature sharing saves and substitutes, in block order.

    FLUX: `attn.to_v` of every single-stream block (RF-Solver-Edit's choice, Wang et al. 2025,
    Sec. 4.3: the self-attention values of the last blocks; there the whole [text; image] sequence).
    SD3 has only joint blocks, whose `attn.to_v` projects the image tokens alone (the text's values
    come from `add_v_proj`); not in the paper: its last two thirds of blocks, the share of FLUX.1's
    57 blocks that its 38 single-stream blocks make (the inversion x editor pairs,
    methods/editors/value_sharing.py; the `rf_solver` and `fireflow` methods refuse sharing on SD3).
    """
    if backbone.family == "flux":
        return [block.attn.to_v for block in backbone.transformer.single_transformer_blocks]
    blocks = list(backbone.transformer.transformer_blocks)
    return [block.attn.to_v for block in blocks[len(blocks) - max(1, round(2 * len(blocks) / 3)) :]]


@contextlib.contextmanager
def value_sharing(backbone: FlowBackbone, sharing: ValueSharing | None) -> Iterator[None]:
    """`sharing`'s hooks on the backbone's `value_modules` while inside (none: no-op)."""
    handles = []
    if sharing is not None:
        for k, module in enumerate(value_modules(backbone)):
            handles.append(module.register_forward_hook(sharing.hook(k)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# The pieces the flow editing methods share (methods/flow_inversion.py, rf_inversion.py, rf_solver.py,
# fireflow.py): their common parameters, where editing starts, the negative text and the solvers' steps.
# Default guidance of the families' diffusers pipelines (StableDiffusion3Pipeline, FluxPipeline).
PIPELINE_GUIDANCE = {"sd3": 7.0, "flux": 3.5}


class FlowInversionParams(Params):
    """What changes the inversion: the schedule, how far to invert, the guidance while inverting."""

    steps: int = Field(28, ge=1, le=1000, description="Euler steps of a full trajectory (both pipelines' default 28)")
    strength: float = Field(1.0, gt=0, le=1, description="fraction of the trajectory inverted then re-generated")
    inversion_guidance: float = Field(1.0, ge=0, le=50, description="guidance with the source prompt while inverting")


class FlowSampleParams(Params):
    """What changes only the edit."""

    guidance: float | None = Field(
        None, ge=0, le=50, description="guidance with the target prompt (unset: SD3 7.0, FLUX 3.5)"
    )


def edit_start(params: FlowInversionParams) -> int:
    """The schedule index editing starts from: `strength` of the steps before the end."""
    return params.steps - max(1, round(params.strength * params.steps))


def negative_text(backbone: FlowBackbone, n: int, guidance: torch.Tensor) -> FlowText | None:
    """SD3's classifier-free guidance runs against the empty prompt (not needed at guidance 1);
    FLUX takes none."""
    if backbone.family != "sd3" or torch.all(guidance == 1):
        return None
    return backbone.encode_text([""] * n)


def rf_solver_step(
    backbone: FlowBackbone,
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None,
    sharing: ValueSharing | None = None,
    step: int = 0,
) -> torch.Tensor:
    """One second-order RF-Solver step of the flow ODE from `sigma` to `sigma_next` (either way);
    `step` is the editing step it corresponds to, for `sharing`."""
    h = sigma_next - sigma
    if sharing is not None:
        sharing.at(step, 0)
    v = backbone.predict_velocity(x, sigma, text, guidance, negative)
    if sharing is not None:
        sharing.at(step, 1)
    v_mid = backbone.predict_velocity(x + h / 2 * v, sigma + h / 2, text, guidance, negative)
    derivative = (v_mid - v) / (h / 2)
    return x + h * v + h**2 / 2 * derivative


def fireflow_step(
    backbone: FlowBackbone,
    x: torch.Tensor,
    v: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None,
    sharing: ValueSharing | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FireFlow midpoint step of the flow ODE from `sigma` to `sigma_next` (either way) from the
    reused velocity `v` (None: evaluated here, the first step of a pass); returns the new latents and
    the midpoint velocity, the next step's `v`. `step` is the editing step it corresponds to, for
    `sharing`, which applies to the midpoint evaluation only."""
    h = sigma_next - sigma
    if v is None:
        if sharing is not None:
            sharing.at(None, 0)
        v = backbone.predict_velocity(x, sigma, text, guidance, negative)
    if sharing is not None:
        sharing.at(step, 1)
    v_mid = backbone.predict_velocity(x + h / 2 * v, sigma + h / 2, text, guidance, negative)
    return x + h * v_mid, v_mid



def rf_solver_solve(
    backbone: FlowBackbone,
    x: torch.Tensor,
    path: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None,
    sharing: ValueSharing | None = None,
) -> torch.Tensor:
    """`euler_solve`'s twin with RF-Solver's second-order step (2 model calls a step): the solver of
    the `rf_solver` method and inversion."""
    for sigma, sigma_next, step in path:
        x = rf_solver_step(backbone, x, sigma, sigma_next, text, guidance, negative, sharing, step)
    return x


def fireflow_solve(
    backbone: FlowBackbone,
    x: torch.Tensor,
    path: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    text: FlowText,
    guidance: torch.Tensor,
    negative: FlowText | None,
    sharing: ValueSharing | None = None,
) -> torch.Tensor:
    """`euler_solve`'s twin with FireFlow's midpoint step, the midpoint velocity carried from step to
    step: the solver of the `fireflow` method and inversion."""
    v = None
    for sigma, sigma_next, step in path:
        x, v = fireflow_step(backbone, x, v, sigma, sigma_next, text, guidance, negative, sharing, step)
    return x


# The guidance of the second-order solvers (RF-Solver, FireFlow): the papers' for FLUX (both passes)
# and, for SD3, the pipeline's while editing and 1 while inverting.
SOLVER_INVERSION_GUIDANCE = {"flux": 2.0, "sd3": 1.0}
SOLVER_EDIT_GUIDANCE = {"flux": 2.0, "sd3": PIPELINE_GUIDANCE["sd3"]}

def load_flow_backbone(name: str, family: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> FlowBackbone:
    """A flow backbone from a preset (`tiny-sd3`, `tiny-flux`), a local diffusers folder or a Hub id."""
    if name in ARCH_PRESETS:
        pipe = _build_arch(family, seed, device, dtype)
        length = MAX_SEQUENCE_LENGTH[family]
    elif name in FLOW_PRESETS:
        pipe = _build_tiny_sd3(seed) if family == "sd3" else _build_tiny_flux(seed)
        length = MAX_SEQUENCE_LENGTH["tiny"]
    else:
        pipe = _load_pretrained(name, family, dtype)
        length = MAX_SEQUENCE_LENGTH["sd3" if family == "sd3" or "schnell" in name.lower() else "flux"]
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval().to(device)
            if module.dtype != dtype:
                module.to(dtype)
    return FlowBackbone(name, family, pipe, device, dtype, name in FLOW_PRESETS, length)


_MORE_FILES = (
    "; add '*.model' to the download for the T5 tokenizer's sentencepiece file, and accept the model's "
    "license on its Hub page first where it is gated (FLUX.1-dev, SD3)"
)


def _load_pretrained(source: str, family: str, dtype: torch.dtype) -> StableDiffusion3Pipeline | FluxPipeline:
    """The family's pipeline from the local cache or folder (safetensors only), else the Hub."""
    cls = PIPELINES[family]

    def load(src: str, local_only: bool) -> StableDiffusion3Pipeline | FluxPipeline:
        return cls.from_pretrained(
            src, local_files_only=local_only, dtype=dtype, use_safetensors=True, cache_dir=hf_cache_dir()
        )

    def missing(is_folder: bool) -> str:
        return f"{cls.__name__}: {_missing_message(source, is_folder)}{_MORE_FILES}"

    return load_cache_first(source, load, missing, BackboneLoadError)


def _clip(seed: int, projection: bool) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(seed: int, d_model: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=49408,
            d_model=d_model,
            d_kv=8,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )


@torch.no_grad()
def _tiny_vae(seed: int) -> AutoencoderKL:
    """A 64 px VAE with 16 latent channels at 1/8 (like SD3's and FLUX's), no quant convs, whose
    `scaling_factor` and `shift_factor` are calibrated so latents have mean 0 and std 1, as the real
    ones are (STACK.md: a random VAE's raw latents are far smaller)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    gen = torch.Generator().manual_seed(seed)
    probe = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=gen), size=(64, 64), mode="bicubic")
    mean = vae.encode(probe.clamp(0, 1) * 2 - 1).latent_dist.mean
    vae.register_to_config(shift_factor=mean.mean().item(), scaling_factor=1.0 / mean.std().item())
    return vae


def _build_tiny_sd3(seed: int) -> StableDiffusion3Pipeline:
    with _seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=1,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,
            caption_projection_dim=32,
            pooled_projection_dim=64,
            pos_embed_max_size=16,
        )
        parts = dict(
            text_encoder=_clip(seed + 1, projection=True),
            text_encoder_2=_clip(seed + 2, projection=True),
            text_encoder_3=_t5(seed + 3, d_model=64),
            vae=_tiny_vae(seed + 4),
        )
    tok = clip_bpe_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3-medium's scheduler config
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, tokenizer=tok, tokenizer_2=tok, tokenizer_3=tok, **parts
    )


def _build_tiny_flux(seed: int) -> FluxPipeline:
    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        parts = dict(
            text_encoder=_clip(seed + 1, projection=False), text_encoder_2=_t5(seed + 3, 32), vae=_tiny_vae(seed + 4)
        )
    tok = clip_bpe_tokenizer()
    # FLUX.1-dev's scheduler config: the shift grows with the number of image tokens.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(transformer=transformer, scheduler=scheduler, tokenizer=tok, tokenizer_2=tok, **parts)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """New parameters in `dtype`, so that a full-size model is never built in float32 first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _build_arch(
    family: str, seed: int, device: torch.device, dtype: torch.dtype
) -> StableDiffusion3Pipeline | FluxPipeline:
    """The full-size SD3-medium or FLUX.1-dev architecture with seeded random weights, for speed and
    memory measurements (like `sd-v1-arch`), built directly on `device` in `dtype`: about 7.6 B
    parameters for SD3 (MMDiT 2.03 B, CLIP-L, CLIP-G, T5-XXL) and 16.8 B for FLUX (MMDiT 11.9 B,
    CLIP-L, T5-XXL), so it is meant for a GPU. The configs are those of the released models'
    config.json files, except T5's vocabulary (49,408 instead of 32,128, +0.07 B parameters): the
    prompts go through the CLIP BPE tokenizer, as in the tiny presets."""

    def clip(hidden: int, layers: int, heads: int, act: str) -> dict:
        return dict(
            vocab_size=49408,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            projection_dim=hidden,
            num_attention_heads=heads,
            num_hidden_layers=layers,
            max_position_embeddings=77,
            hidden_act=act,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )

    t5 = T5Config(
        vocab_size=49408, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu"
    )
    vae = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=16,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    tok = clip_bpe_tokenizer()
    with _seeded(seed), torch.device(device), _default_dtype(dtype):
        if family == "sd3":
            return StableDiffusion3Pipeline(
                transformer=SD3Transformer2DModel(
                    sample_size=128,
                    patch_size=2,
                    in_channels=16,
                    num_layers=24,
                    attention_head_dim=64,
                    num_attention_heads=24,
                    joint_attention_dim=4096,
                    caption_projection_dim=1536,
                    pooled_projection_dim=2048,
                    out_channels=16,
                    pos_embed_max_size=192,
                ),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=AutoencoderKL(**vae, scaling_factor=1.5305, shift_factor=0.0609),
                text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip(768, 12, 12, "quick_gelu"))),
                text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip(1280, 32, 20, "gelu"))),
                text_encoder_3=T5EncoderModel(t5),
                tokenizer=tok,
                tokenizer_2=tok,
                tokenizer_3=tok,
            )
        return FluxPipeline(
            transformer=FluxTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=19,
                num_single_layers=38,
                attention_head_dim=128,
                num_attention_heads=24,
                joint_attention_dim=4096,
                pooled_projection_dim=768,
                guidance_embeds=True,
                axes_dims_rope=(16, 56, 56),
            ),
            scheduler=FlowMatchEulerDiscreteScheduler(
                shift=3.0,
                use_dynamic_shifting=True,
                base_shift=0.5,
                max_shift=1.15,
                base_image_seq_len=256,
                max_image_seq_len=4096,
            ),
            vae=AutoencoderKL(**vae, scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=CLIPTextModel(CLIPTextConfig(**clip(768, 12, 12, "quick_gelu"))),
            text_encoder_2=T5EncoderModel(t5),
            tokenizer=tok,
            tokenizer_2=tok,
        )
