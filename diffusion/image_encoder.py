"""A CLIP image encoder for methods that condition on the input image (StyleDiffusion).

`load_image_encoder` takes a Hub id or a local folder (transformers `CLIPVisionModelWithProjection`
plus its `CLIPImageProcessor`, safetensors only) or the offline preset `tiny` (seeded random
weights, flagged by `random_weights`). Offline, a missing model is an error that names it and
how to provide it. Encoders are cached per (name, device): a worker loads each one once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from editsweep.core.hub import hf_offline

# The encoder of the official StyleDiffusion code: all 197 ViT-B/16 tokens after the final layer
# norm, whose width (768) is Stable Diffusion 1.x's cross-attention width.
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-base-patch16"
PRESETS = ("tiny",)


class ImageEncoderLoadError(RuntimeError):
    """The image encoder's weights cannot be loaded; the message says which and how to fix it."""


@dataclass
class ImageEncoder:
    """A CLIP vision tower and its preprocessing, on one device."""

    name: str
    model: CLIPVisionModelWithProjection
    processor: CLIPImageProcessor
    device: torch.device
    random_weights: bool

    @property
    def weights_source(self) -> str:
        """Where the encoder's weights came from, as the backbone records its own."""
        return f"{self.name}:random" if self.random_weights else self.name

    @property
    def width(self) -> int:
        """Feature size of each token."""
        return int(self.model.config.hidden_size)

    @property
    def n_tokens(self) -> int:
        """Tokens per image: the class token plus one per patch."""
        config = self.model.config
        return (config.image_size // config.patch_size) ** 2 + 1

    @torch.no_grad()
    def tokens(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """All token features (B, n_tokens, width) after the final layer norm, float32."""
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        vision = self.model.vision_model
        hidden = vision(pixel_values=pixels.to(self.device, self.model.dtype)).last_hidden_state
        return vision.post_layernorm(hidden).float()


def load_image_encoder(name: str, device: str | torch.device = "cpu", seed: int = 0) -> ImageEncoder:
    """An image encoder from the preset `tiny`, a local folder or a Hub id; one per (name, device)."""
    return _cached(name, str(torch.device(device)), seed)


@lru_cache(maxsize=4)
def _cached(name: str, device: str, seed: int) -> ImageEncoder:
    if name == "tiny":
        model, processor = _build_tiny(seed)
    else:
        model, processor = _load_pretrained(name)
    model.requires_grad_(False).eval().to(device)
    return ImageEncoder(name, model, processor, torch.device(device), random_weights=name in PRESETS)


def _build_tiny(seed: int) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
    """A 2-layer ViT with 32-d tokens on 32 px inputs (17 tokens), seeded random weights."""
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, processor


def _load_pretrained(source: str) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
    """Model and processor from `source` (local folder or Hub id), safetensors only, cache first."""
    local = Path(source).expanduser()
    src = str(local) if local.exists() else source

    def load(local_only: bool):
        return (
            CLIPVisionModelWithProjection.from_pretrained(src, use_safetensors=True, local_files_only=local_only),
            CLIPImageProcessor.from_pretrained(src, local_files_only=local_only),
        )

    # The cache first: instant, and offline a network attempt only adds retries.
    with contextlib.suppress(OSError, ValueError):
        return load(local_only=True)
    offline = hf_offline()
    if local.exists() or offline:
        raise ImageEncoderLoadError(_missing_message(source, local.exists()))
    try:
        return load(local_only=False)
    except (OSError, ValueError) as err:
        raise ImageEncoderLoadError(f"{_missing_message(source, False)}\ncause: {err}") from err


def _missing_message(source: str, is_folder: bool) -> str:
    if is_folder:
        return (
            f"cannot load a CLIP image encoder from {source}: it needs config.json, model.safetensors "
            "(CLIPVisionModelWithProjection) and preprocessor_config.json"
        )
    return (
        f"the CLIP image encoder {source!r} is not in the local Hugging Face cache and cannot be "
        f"downloaded here. Download it where there is a network (`huggingface-cli download {source} "
        "--include '*.safetensors' '*.json'`), or give a local folder with config.json, "
        f"model.safetensors and preprocessor_config.json, or use the offline preset {', '.join(PRESETS)}"
    )
