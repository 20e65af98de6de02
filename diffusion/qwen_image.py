"""The Qwen-Image family (Qwen team 2025, "Qwen-Image Technical Report"): Qwen-Image-Edit through
diffusers' own `QwenImageEditPipeline` and its parts (QwenImageTransformer2DModel, an MMDiT;
AutoencoderKLQwenImage; the Qwen2.5-VL text encoder that reads the instruction together with the
input image; FlowMatchEulerDiscreteScheduler with resolution-dependent shift).

A `QwenImageBackbone` gives methods the pipeline's own steps, batch-first: `encode_instructions`
(the pipeline's prompt template and hidden-state extraction, with the image seen by the VL encoder),
`image_latents` (the input's VAE latents, packed, that the transformer attends to next to the noisy
ones), `sample` (the denoising loop of `QwenImageEditPipeline.__call__`, with one true-CFG scale per
batch row) and `decode_packed`; `encode_images` / `decode` on unpacked latents (B, C, h, w) as the
other families have them (methods/vae_roundtrip.py). tests/diffusion/test_qwen_image.py checks it
against the pipeline.

The pipeline resizes the input to an area of 1024 x 1024 pixels at its aspect ratio for both the VL
encoder and the VAE (`calculate_dimensions(1024 * 1024, ratio)`), the model's native resolution;
here that area is `resolution ** 2` (1024 ** 2 for the released model, so the same; 64 ** 2 for the
tiny preset, whose 1024 px conditioning would cost minutes on a CPU). The worker hands inputs at
`resolution` (bench/worker.py `fit_square`), so generation runs at the input's size.

`tiny-qwen-image` is built offline from small configs with seeded random weights (after diffusers'
tests/pipelines/qwenimage/test_qwenimage_edit.py, with an 8x VAE instead of their 4x one, so that
64 px images make 8x8 latents; the VL encoder sees the image at 56 x 56 px, 4 image tokens). Its tokenizer is NOT Qwen's (that ships with the Hub checkpoint): a byte-level
BPE of 512 entries trained in memory on `_TOKENIZER_CORPUS`, with the same pre-tokenizer
(transformers' `Qwen2Tokenizer`) and the special tokens the prompt template uses.
`qwen-image-arch` is the full-size architecture with random weights (`_build_arch`), for GPU timings.
`Qwen/Qwen-Image-Edit-2509` and later use `QwenImageEditPlusPipeline` (several input images, another
template) and are not part of this family here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions, calculate_shift
from PIL import Image
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from editsweep.core.hub import hf_cache_dir, load_cache_first
from editsweep.diffusion.backbone import BackboneLoadError, _missing_message, _seeded
from editsweep.diffusion.inputs import to_pil

FAMILY = "qwen-image"
PRESETS = ("tiny-qwen-image", "qwen-image-arch")
KNOWN_IDS = {"Qwen/Qwen-Image-Edit": FAMILY}
PIPELINE_CLASS = "QwenImageEditPipeline"  # model_index.json `_class_name` of its folders (diffusion/flow.py)
RESOLUTION = 1024  # the pipeline's conditioning side (1024 x 1024 area) and default output size
TINY_RESOLUTION = 64
NEGATIVE_PROMPT = " "  # the pipeline docs' negative prompt that enables true CFG
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# What the tiny tokenizer learns its merges from: the pipeline's prompt template and editing phrases.
_TOKENIZER_CORPUS = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that "
    "meets the user's requirements while maintaining consistency with the original input where appropriate.",
    "system user assistant",
    "turn the cat into a dog. make it a painting. change the color of the car to red. add a hat to the man.",
    "remove the tree from the background. replace the apple with an orange. make the sky blue at sunset.",
    "a photo of a red circle and a blue square on a white table, a green triangle, a yellow star.",
)


@dataclass
class QwenImageBackbone:
    """Qwen-Image-Edit on one device: the diffusers pipeline and its steps, batch-first."""

    name: str
    pipe: QwenImageEditPipeline
    device: torch.device
    dtype: torch.dtype
    random_weights: bool
    resolution: int = RESOLUTION  # image side the worker fits inputs to; squared, the conditioning area
    source: str = ""
    family: ClassVar[str] = FAMILY

    @property
    def weights_source(self) -> str:
        """Recorded in every row: where the backbone's weights came from."""
        return f"{self.name}:random" if self.random_weights else (self.source or self.name)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side."""
        return int(self.pipe.vae_scale_factor)

    def condition_images(self, images: torch.Tensor) -> list[Image.Image]:
        """Images (B, 3, H, W) in [0, 1] as the pipeline conditions on them: 8-bit RGB, resized to
        an area of `resolution ** 2` at their aspect ratio (multiples of 32), as its `__call__`."""
        h, w = images.shape[2:]
        width, height, _ = calculate_dimensions(self.resolution**2, w / h)
        return [self.pipe.image_processor.resize(to_pil(image), height, width) for image in images]

    @torch.no_grad()
    def encode_instructions(
        self, prompts: list[str], images: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pipeline's prompt encoding: Qwen2.5-VL's last hidden states of the template holding the
        image and the instruction (system prefix dropped), (B, L, D) padded, and their mask (None
        when nothing is padded); computed where the text encoder is (the CPU when offloaded,
        diffusion/memory.py), returned on the device."""
        embeds, mask = self.pipe.encode_prompt(prompts, image=images, device=self.pipe.text_encoder.device)
        return embeds.to(self.device, self.dtype), None if mask is None else mask.to(self.device)

    @torch.no_grad()
    def image_latents(self, images: list[Image.Image]) -> torch.Tensor:
        """The conditioning images' VAE latents (posterior mode, normalised), packed in 2x2 patches:
        (B, h/2 * w/2, 4C), as the pipeline's `prepare_latents`."""
        height, width = images[0].height, images[0].width
        x = self.pipe.image_processor.preprocess(images, height, width).unsqueeze(2)
        latents = self.pipe._encode_vae_image(x.to(self.device, self.dtype), generator=None)
        b, c, _, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)

    def latent_side(self, pixels: int) -> int:
        """Latent cells along an image side of `pixels` (even: the transformer packs 2x2 patches)."""
        return 2 * (pixels // (self.vae_scale_factor * 2))

    def noise(self, generators: list[torch.Generator], height: int, width: int) -> torch.Tensor:
        """Initial noise (B, h/2 * w/2, 4C), packed, one sample per generator, drawn on its device."""
        c = self.pipe.transformer.config.in_channels // 4
        shape = (c, self.latent_side(height), self.latent_side(width))
        noise = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators])
        return self.pipe._pack_latents(noise.to(self.device, self.dtype), len(generators), *shape)

    def scheduler(self, steps: int, tokens: int) -> FlowMatchEulerDiscreteScheduler:
        """A fresh scheduler with the pipeline's timesteps: a uniform sigma grid 1 -> 1/steps, shifted
        by mu, which grows with the number of image tokens."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        c = scheduler.config
        mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=self.device, mu=mu)
        scheduler.set_begin_index(0)
        return scheduler

    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        image_latents: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor | None],
        negative: tuple[torch.Tensor, torch.Tensor | None] | None,
        true_cfg_scale: torch.Tensor,
        steps: int,
        size: tuple[int, int],
        condition_size: tuple[int, int],
    ) -> torch.Tensor:
        """The pipeline's denoising loop on packed latents, one `true_cfg_scale` per row: rows above 1
        use true classifier-free guidance against `negative`, rescaled to the conditional prediction's
        norm per token (the pipeline's); the others the conditional prediction alone (`negative` may
        then be None)."""
        latents = noise.to(self.device, self.dtype)
        image_latents = image_latents.to(self.device, self.dtype)
        f = self.vae_scale_factor * 2
        shapes = [[(1, size[0] // f, size[1] // f), (1, condition_size[0] // f, condition_size[1] // f)]]
        shapes = shapes * latents.shape[0]
        scale = true_cfg_scale.to(self.device, torch.float32).view(-1, 1, 1)
        guided = scale > 1
        if negative is None and bool(guided.any()):
            raise ValueError("a true_cfg_scale above 1 needs the negative prompt's embeddings")
        scheduler = self.scheduler(steps, latents.shape[1])
        for t in scheduler.timesteps:
            inputs = torch.cat([latents, image_latents], dim=1)
            timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000

            def predict(embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
                out = self.pipe.transformer(
                    hidden_states=inputs,
                    timestep=timestep,
                    encoder_hidden_states=embeds,
                    encoder_hidden_states_mask=mask,
                    img_shapes=shapes,
                    return_dict=False,
                )[0]
                return out[:, : latents.shape[1]]

            pred = predict(*text)
            if bool(guided.any()):
                neg = predict(*negative)
                combined = neg + scale.to(pred.dtype) * (pred - neg)
                rescaled = combined * (pred.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True))
                pred = torch.where(guided, rescaled, pred)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        return latents

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(self.device, self.pipe.vae.dtype)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(self.device, self.pipe.vae.dtype)
        return mean, std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) of images (B, 3, H, W) in [0, 1]: the posterior mean, normalised by the
        VAE's `latents_mean` / `latents_std` (the VAE sees one-frame videos)."""
        x = (images.to(self.device, self.pipe.vae.dtype) * 2 - 1).unsqueeze(2)
        mean, std = self._latent_stats()
        return (self.pipe.vae.encode(x).latent_dist.mean[:, :, 0] - mean) / std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32, from normalised latents (B, C, h, w)."""
        mean, std = self._latent_stats()
        z = (latents.to(self.device, self.pipe.vae.dtype) * std + mean).unsqueeze(2)
        return ((self.pipe.vae.decode(z, return_dict=False)[0][:, :, 0].float() + 1) / 2).clamp(0, 1)

    def decode_packed(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] from packed latents, as the pipeline's output."""
        return self.decode(self.pipe._unpack_latents(latents, height, width, self.vae_scale_factor)[:, :, 0])


def load_qwen_image_backbone(
    name: str, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> QwenImageBackbone:
    """The Qwen-Image-Edit backbone from the `tiny-qwen-image` preset, a local folder or a Hub id."""
    if name == "qwen-image-arch":
        pipe, resolution = _build_arch(seed, device, dtype), RESOLUTION
    elif name in PRESETS:
        pipe, resolution = _build_tiny(seed), TINY_RESOLUTION
    else:
        pipe, resolution = _load_pretrained(name, dtype), RESOLUTION
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval().to(device)
            if module.dtype != dtype:
                module.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return QwenImageBackbone(name, pipe, device, dtype, name in PRESETS, resolution)


def _load_pretrained(source: str, dtype: torch.dtype) -> QwenImageEditPipeline:
    """The pipeline from the local cache or folder (safetensors only), else the Hub."""

    def load(src: str, local_only: bool) -> QwenImageEditPipeline:
        return QwenImageEditPipeline.from_pretrained(
            src, local_files_only=local_only, dtype=dtype, use_safetensors=True, cache_dir=hf_cache_dir()
        )

    def missing(is_folder: bool) -> str:
        if is_folder:
            return (
                f"cannot load a Qwen-Image-Edit backbone from {source}: it needs model_index.json and the "
                "transformer/, vae/, text_encoder/ (safetensors weights), tokenizer/, processor/ and scheduler/ "
                f"subfolders of a {PIPELINE_CLASS}"
            )
        return f"{PIPELINE_CLASS}: {_missing_message(source, False)}"

    return load_cache_first(source, load, missing, BackboneLoadError)


@lru_cache(maxsize=1)
def _tiny_tokenizer_parts() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of the tiny preset's byte-level BPE, trained on `_TOKENIZER_CORPUS` with
    the `tokenizers` library (deterministic: same corpus, same merges) and Qwen2's pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def tiny_tokenizer() -> Qwen2Tokenizer:
    """The tiny preset's tokenizer (not Qwen's: see the module docstring), special tokens included."""
    from tokenizers import AddedToken

    vocab, merges = _tiny_tokenizer_parts()
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=1024)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    return tokenizer


@torch.no_grad()
def _tiny_vae(seed: int) -> AutoencoderKLQwenImage:
    """A small Qwen-Image VAE (8x downsampling, 4 latent channels) whose `latents_mean` and
    `latents_std` are measured on a probe, so latents are normalised as the released model's are."""
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(
        base_dim=16,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    gen = torch.Generator().manual_seed(seed)
    probe = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=gen), size=(64, 64), mode="bicubic")
    mean = vae.encode((probe.clamp(0, 1) * 2 - 1).unsqueeze(2)).latent_dist.mode()
    vae.register_to_config(
        latents_mean=mean.mean(dim=(0, 2, 3, 4)).tolist(), latents_std=mean.std(dim=(0, 2, 3, 4)).tolist()
    )
    return vae


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Qwen-Image-Edit's scheduler config: the shift grows with the image tokens, exponentially."""
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )


def _build_tiny(seed: int) -> QwenImageEditPipeline:
    """The `tiny-qwen-image` pipeline: seeded random weights from small configs, offline."""
    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    with _seeded(seed):
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        )
        vae = _tiny_vae(seed + 1)
        torch.manual_seed(seed + 2)
        config = Qwen2_5_VLConfig(
            text_config=dict(
                hidden_size=16,
                intermediate_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                rope_theta=1e6,
                vocab_size=len(tokenizer),
                bos_token_id=ids[0],
                eos_token_id=ids[2],
                pad_token_id=ids[0],
            ),
            vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
            vocab_size=len(tokenizer),
            vision_start_token_id=ids[3],
            vision_end_token_id=ids[4],
            image_token_id=ids[5],
            video_token_id=ids[6],
        )
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    # 56 x 56 px for the VL encoder (2 x 2 merged patches of 28 px): 4 image tokens in the prompt.
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )
    pipe = QwenImageEditPipeline(
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )
    # The pipeline drops the template's system prefix by a token count (64) that holds for Qwen's
    # tokenizer; the tiny tokenizer's count for the same prefix:
    prefix = pipe.prompt_template_encode.split("<|vision_start|>")[0]
    pipe.prompt_template_encode_start_idx = len(tokenizer(prefix).input_ids)
    return pipe


def _build_arch(seed: int, device: torch.device, dtype: torch.dtype) -> QwenImageEditPipeline:
    """The full-size Qwen-Image-Edit architecture with seeded random weights, for speed and memory
    measurements (like `sd-v1-arch`), built directly on `device` in `dtype` (diffusion/flow.py
    `_default_dtype`): the MMDiT (~20.4 B parameters; diffusers' defaults are Qwen-Image's config), the
    Qwen-Image VAE (its defaults too) and a Qwen2.5-VL-7B text encoder (~8.3 B; its released config),
    about 29 B parameters, so it is meant for a GPU. The prompts go through the tiny preset's
    tokenizer (its special tokens' ids in the config), not Qwen's; the vocabulary keeps Qwen's size."""
    from editsweep.diffusion.flow import _default_dtype

    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
            rope_theta=1e6,
            vocab_size=152064,
            max_position_embeddings=128000,
            bos_token_id=ids[0],
            eos_token_id=ids[2],
            pad_token_id=ids[0],
        ),
        vision_config=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, hidden_act="silu"
        ),
        vocab_size=152064,
        vision_start_token_id=ids[3],
        vision_end_token_id=ids[4],
        image_token_id=ids[5],
        video_token_id=ids[6],
    )
    with _seeded(seed), torch.device(device), _default_dtype(dtype):
        pipe = QwenImageEditPipeline(
            scheduler=_scheduler(),
            vae=AutoencoderKLQwenImage(),
            text_encoder=Qwen2_5_VLForConditionalGeneration(config),
            tokenizer=tokenizer,
            processor=Qwen2VLProcessor(
                image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
            ),
            transformer=QwenImageTransformer2DModel(),
        )
    prefix = pipe.prompt_template_encode.split("<|vision_start|>")[0]
    pipe.prompt_template_encode_start_idx = len(tokenizer(prefix).input_ids)
    return pipe
