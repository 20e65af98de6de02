"""Stable Diffusion XL backbones (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for
High-Resolution Image Synthesis"), through diffusers' own classes.

SDXL is Stable Diffusion's epsilon-prediction UNet and DDPM noise schedule with three changes: two CLIP
text encoders whose penultimate hidden states are concatenated (768 + 1280 = 2048 wide), the second
encoder's pooled projection fed to the UNet as `added_cond_kwargs["text_embeds"]`, and size
conditioning `added_cond_kwargs["time_ids"]` = (original size, crop top-left, target size) (Sec. 2.2).

Design: `SDXLBackbone` is a `Backbone` whose `encode_text` returns ONE tensor per prompt,
(B, 77 + 1, D): the 77 token embeddings followed by the pooled embedding as an extra last token,
zero-padded to the hidden width D. Every SD method that keeps text as a tensor (concatenates, repeats,
interpolates or optimises it: Null-text, Prompt-to-Prompt, Negative-prompt inversion...) and calls the
UNet only through diffusion/ddim.py's `unet_epsilon` then runs unchanged: `unet_epsilon` asks
`Backbone.unet_text` to unpack the tensor (tokens -> `encoder_hidden_states`, so that attention
processors see 77 text tokens; last token -> `text_embeds`; `time_ids` from the latents' size,
(H, W, 0, 0, H, W), the pipeline's default for an uncropped image of the generated size). A separate
pooled tensor (as `FlowText` in diffusion/flow.py) would have meant rewriting every SD method.

Text encoding is `StableDiffusionXLPipeline.encode_prompt` itself (no CFG, no clip skip). The empty
prompt is encoded as zeros where the model's config has `force_zeros_for_empty_prompt` (SDXL base,
the InstructPix2Pix SDXL model): the pipelines' negative embeddings are then zeros, and methods here
take the empty prompt as their unconditional text, so DDIM sampling at any guidance equals the
pipeline's (tests/diffusion/test_sdxl.py). Difference: a *source or target* prompt that is exactly ""
is zeros too (the pipeline would encode it); that is the unconditional SDXL was trained with.

Schedule: SD's DDIM (`SD_SCHEDULER`; SDXL base ships an Euler scheduler over the same betas, and
`DDIMScheduler.from_config` takes it). VAE: SDXL's (scaling 0.13025) overflows in float16, so with
`force_upcast` in its config it is kept in float32 when the backbone is float16 (what the pipelines do
around each VAE call); `Backbone.encode_images` / `decode` run it in its own dtype.

Presets of seeded random weights, built offline from small configs (after diffusers' SDXL pipeline
tests: attention only at the second level, linear projections, `text_time` added embeddings):
- `tiny-sdxl`: 64 px, 8x8 latents, two 32-wide CLIP encoders (cross-attention 64), the project's CLIP
  BPE tokenizer for both; conditioned like `tiny` (diffusion/backbone.py `_condition`);
- `tiny-sdxl-ip2p`: the same with an 8-channel UNet (latent + image latent), for InstructPix2Pix SDXL;
- `sdxl-arch`: the full-size SDXL base 1.0 architecture (UNet 2.57 B, CLIP-L, OpenCLIP bigG), random,
  built directly on the device in the backbone's dtype, for speed measurements on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from editsweep.core.hub import hf_cache_dir, load_cache_first
from editsweep.diffusion.backbone import (
    SD_SCHEDULER,
    Backbone,
    KNOWN_UNET_IN_CHANNELS,
    BackboneLoadError,
    _condition,
    _missing_message,
    _seeded,
    clip_bpe_tokenizer,
)

SDXL_PRESETS = ("tiny-sdxl", "tiny-sdxl-ip2p", "sdxl-arch")
# Hub ids known to be SDXL without loading them (spec validation: diffusion/backbone.py `family_of`).
KNOWN_SDXL_IDS = ("stabilityai/stable-diffusion-xl-base-1.0", "diffusers/sdxl-instructpix2pix-768")
SDXL_VAE_SCALING = 0.13025


@dataclass
class SDXLBackbone(Backbone):
    """An SDXL backbone: `Backbone`'s parts plus the second text encoder; text packed as described
    in the module docstring."""

    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    force_zeros_for_empty_prompt: bool = True
    family = "sdxl"

    @cached_property
    def pipe(self) -> StableDiffusionXLPipeline:
        """The diffusers pipeline over this backbone's parts, for its `encode_prompt`."""
        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=self.scheduler,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )

    @property
    def pooled_width(self) -> int:
        """Width of the second text encoder's pooled projection (`text_embeds`)."""
        return int(self.text_encoder_2.config.projection_dim)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, 78, D): the pipeline's token embeddings and, as the last token, its pooled embedding
        zero-padded to D; zeros for "" under `force_zeros_for_empty_prompt`. Computed where the text encoders are (the
        CPU when offloaded, diffusion/memory.py), returned on the device."""
        encoded = self.pipe.encode_prompt(list(prompts), device=self.text_encoder.device, do_classifier_free_guidance=False)
        embeds, pooled = encoded[0].to(self.device), encoded[2].to(self.device)
        pooled = torch.nn.functional.pad(pooled, (0, embeds.shape[-1] - pooled.shape[-1]))
        packed = torch.cat([embeds, pooled[:, None].to(embeds.dtype)], dim=1)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=packed.device)
            packed = torch.where(empty.view(-1, 1, 1), torch.zeros_like(packed), packed)
        return packed.to(self.dtype)

    def unet_text(
        self, embeddings: torch.Tensor, latent_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Unpack `encode_text`'s tensor: 77 token embeddings, and `text_embeds` + `time_ids`
        (H, W, 0, 0, H, W) for images of the latents' size."""
        h, w = (side * self.vae_scale_factor for side in latent_hw)
        time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=embeddings.dtype, device=embeddings.device)
        added = {
            "text_embeds": embeddings[:, -1, : self.pooled_width],
            "time_ids": time_ids.expand(len(embeddings), -1),
        }
        return embeddings[:, :-1], added


def load_sdxl_backbone(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> SDXLBackbone:
    """An SDXL backbone from a preset, a local diffusers folder or a Hub id (module docstring)."""
    force_zeros = True
    if name == "sdxl-arch":
        parts = _build_arch(seed, device, dtype)
    elif name in SDXL_PRESETS:
        parts = _build_tiny(seed, unet_in_channels=KNOWN_UNET_IN_CHANNELS[name])
    else:
        pipe = _load_pretrained(name, dtype)
        parts = _parts_of(pipe, name)
        force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
    unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler = parts
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.requires_grad_(False).eval().to(device)
        keep_float32 = module is vae and dtype == torch.float16 and vae.config.force_upcast
        wanted = torch.float32 if keep_float32 else dtype
        if module.dtype != wanted:
            module.to(wanted)
    return SDXLBackbone(
        name=name,
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        device=device,
        dtype=dtype,
        random_weights=name in SDXL_PRESETS,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        force_zeros_for_empty_prompt=force_zeros,
    )


def _parts_of(pipe: DiffusionPipeline, name: str) -> tuple:
    """The parts of a loaded SDXL pipeline (base or InstructPix2Pix), with SD's DDIM schedule."""
    components = pipe.components
    missing = [k for k in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
               if components.get(k) is None]
    if missing:
        raise BackboneLoadError(
            f"{name!r} ({type(pipe).__name__}) lacks {', '.join(missing)}: editsweep's SDXL backbone needs both "
            "text encoders (the refiner, which has only the second, is not an editing backbone)"
        )
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2, scheduler)


def _load_pretrained(source: str, dtype: torch.dtype) -> DiffusionPipeline:
    """The pipeline named by the folder's or Hub id's model_index.json (safetensors only), cache first."""

    def load(src: str, local_only: bool) -> DiffusionPipeline:
        return DiffusionPipeline.from_pretrained(
            src, local_files_only=local_only, dtype=dtype, use_safetensors=True, cache_dir=hf_cache_dir()
        )

    def missing(is_folder: bool) -> str:
        return f"StableDiffusionXLPipeline: {_missing_message(source, is_folder)}"

    return load_cache_first(source, load, missing, BackboneLoadError)


def _clip(hidden: int, mlp: int, layers: int, heads: int, act: str, projection: bool) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=mlp,
        projection_dim=hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(blocks: tuple[int, ...], layers: int, side: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=blocks,
        layers_per_block=layers,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=side,
        scaling_factor=SDXL_VAE_SCALING,
        force_upcast=True,
    )


def _build_tiny(seed: int, unet_in_channels: int = 4) -> tuple:
    """`tiny-sdxl` (4 UNet input channels) or `tiny-sdxl-ip2p` (8)."""
    time_dim, pooled = 8, 32
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=unet_in_channels,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + pooled,
            norm_num_groups=32,
        )
        vae = _vae((32, 32, 64, 64), 1, 64)
        text_encoder = _clip(32, 64, 2, 4, "quick_gelu", projection=False)
        text_encoder_2 = _clip(pooled, 64, 2, 4, "gelu", projection=True)
    _condition(unet, vae, seed)
    tok = clip_bpe_tokenizer()
    return unet, vae, text_encoder, text_encoder_2, tok, tok, DDIMScheduler(**SD_SCHEDULER)


def _build_arch(seed: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """SDXL base 1.0's architecture (its config.json files), seeded random, built on `device` in
    `dtype`: about 3.5 B parameters, meant for a GPU. Not conditioned (`_condition` would encode 1024 px
    probes): speed does not depend on it."""
    from editsweep.diffusion.flow import _default_dtype

    with _seeded(seed), torch.device(device), _default_dtype(dtype):
        unet = UNet2DConditionModel(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = _vae((128, 256, 512, 512), 2, 1024)
        text_encoder = _clip(768, 3072, 12, 12, "quick_gelu", projection=False)  # CLIP ViT-L/14
        text_encoder_2 = _clip(1280, 5120, 32, 20, "gelu", projection=True)  # OpenCLIP ViT-bigG/14
    tok = clip_bpe_tokenizer()
    return unet, vae, text_encoder, text_encoder_2, tok, tok, DDIMScheduler(**SD_SCHEDULER)
