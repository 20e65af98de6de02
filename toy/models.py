"""The toy models' architectures, and saving / loading their weights.

The backbone has Stable Diffusion's shape, scaled down so that it trains on a 2-core CPU within an
hour (`toy/train.py`): an AutoencoderKL with three blocks (latent factor 4: 32 px images, 8x8x4
latents - factor 8 would leave 4x4 latents, too coarse for two objects and for attention maps), a
UNet2DConditionModel with cross-attention at both of its resolutions, a CLIPTextModel read through
the real CLIP BPE tokenizer, and SD's DDIM schedule - so that every method runs on it unchanged.
The toy CLIP is an open_clip model of a small config, saved as an open_clip model folder
(`open_clip_config.json` + safetensors), loaded through the same code path as real weights.

Weights are stored in float16 (the shipped files must stay small: the 49,408-token embedding tables
dominate) and loaded as float32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

WEIGHTS_DIR = Path(__file__).parent / "weights"
BACKBONE_PARTS = ("vae", "unet", "text_encoder")
CLIP_FOLDER = "clip"

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=32,
)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)
TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 96, "head_width": 32, "patch_size": 4},
    # 32 tokens hold the world's longest caption (two objects on a gradient: 25 with start and end).
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
# Pixel statistics of the world's images (mean, std per channel), the toy CLIP's normalisation.
CLIP_PREPROCESS: dict[str, Any] = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.3, 0.3, 0.3],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def new_vae() -> AutoencoderKL:
    """An untrained toy VAE."""
    return AutoencoderKL(**VAE_CONFIG)


def new_unet() -> UNet2DConditionModel:
    """An untrained toy UNet."""
    return UNet2DConditionModel(**UNET_CONFIG)


def new_text_encoder() -> CLIPTextModel:
    """An untrained toy text encoder."""
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def new_clip() -> torch.nn.Module:
    """An untrained toy CLIP (open_clip's CLIP class with `CLIP_CONFIG`)."""
    from open_clip.model import CLIP

    return CLIP(**CLIP_CONFIG)


def save_part(module: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a module's state dict as float16 safetensors (tied or shared tensors copied once)."""
    state = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_part(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load float16 safetensors into `module` (float32), every key present and used."""
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    module.load_state_dict(state, strict=True)
    return module


def save_vae(folder: Path, vae: AutoencoderKL) -> None:
    """The VAE as `vae.safetensors` and its latent scaling factor in `backbone.json`."""
    save_part(vae, folder / "vae.safetensors")
    info = {"scaling_factor": float(vae.config.scaling_factor)}
    (folder / "backbone.json").write_text(json.dumps(info, indent=1) + "\n")


def save_denoiser(folder: Path, unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> None:
    """The UNet and the text encoder as `unet.safetensors`, `text_encoder.safetensors`."""
    save_part(unet, folder / "unet.safetensors")
    save_part(text_encoder, folder / "text_encoder.safetensors")


def load_backbone_parts(folder: Path = WEIGHTS_DIR) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, DDIMScheduler]:
    """(unet, vae, text_encoder, scheduler) of the trained toy backbone in `folder`."""
    from editsweep.diffusion.backbone import SD_SCHEDULER

    missing = [p for p in (*BACKBONE_PARTS, "backbone") if not (folder / f"{p}.{'json' if p == 'backbone' else 'safetensors'}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"the toy backbone's weights are missing in {folder} ({', '.join(missing)}): reinstall editsweep, "
            "or train them with `editsweep toy train --out DIR` and copy DIR's files there"
        )
    info = json.loads((folder / "backbone.json").read_text())
    vae = load_part(AutoencoderKL(**{**VAE_CONFIG, "scaling_factor": info["scaling_factor"]}), folder / "vae.safetensors")
    unet = load_part(new_unet(), folder / "unet.safetensors")
    text_encoder = load_part(new_text_encoder(), folder / "text_encoder.safetensors")
    return unet, vae, text_encoder, DDIMScheduler(**SD_SCHEDULER)


def save_clip(folder: Path, model: torch.nn.Module) -> None:
    """An open_clip model folder: `open_clip_config.json` and `open_clip_model.safetensors`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": CLIP_CONFIG, "preprocess_cfg": CLIP_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1) + "\n")
    save_part(model, folder / "open_clip_model.safetensors")


def weights_digest(folder: Path) -> str:
    """The first 12 hex digits of a sha256 over the backbone's weight files (recorded in rows)."""
    digest = hashlib.sha256()
    for name in (*BACKBONE_PARTS, "backbone"):
        path = folder / f"{name}.{'json' if name == 'backbone' else 'safetensors'}"
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
