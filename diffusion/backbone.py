"""Load a Stable Diffusion backbone: from a Hub id, a local diffusers folder, or an offline preset.

Presets build the model from configs with seeded random weights, so that the project runs and is
tested without downloading anything:

- `tiny`: a small SD-shaped model (64 px images, 8x8 latents) with the real CLIP BPE tokenizer,
  conditioned so that it behaves like a trained model where tests need it (see `_condition`);
- `sd-v1-arch`: the full-size SD v1 architecture (512 px), for speed and memory measurements;
- `tiny-ip2p`: `tiny` with an InstructPix2Pix UNet (8 input channels: the noisy latent and the
  input image's latent), for the instruction-editing methods (methods/instruct_pix2pix.py);
- `tiny-inpaint`: `tiny` with an inpainting UNet (9 input channels: the noisy latent, the mask and
  the masked image's latent), for the inpainting editor (methods/inpaint.py);
- `tiny-sdxl`, `tiny-sdxl-ip2p`, `sdxl-arch`: SDXL (diffusion/sdxl.py), loaded as an `SDXLBackbone`, as
  are SDXL Hub ids and folders;
- `tiny-sd3`, `tiny-flux`: small flow-matching backbones (diffusion/flow.py), loaded as a
  `FlowBackbone`, as are SD3 and FLUX Hub ids and folders (`family_of`); `sd3-arch`, `flux-arch`:
  their full-size architectures (SD3-medium, FLUX.1-dev), for speed measurements on a GPU;
- `tiny-qwen-image`: a small Qwen-Image-Edit pipeline (diffusion/qwen_image.py), loaded as a
  `QwenImageBackbone`, as are `Qwen/Qwen-Image-Edit` and folders of a `QwenImageEditPipeline`;
  `qwen-image-arch`: its full-size architecture, for speed measurements on a GPU.

The `toy` preset is trained, not random: the SD-shaped models of `toy/models.py`, trained on the
toy world (`toy/train.py`) and shipped with the package. Edits on it are real, but its numbers are
about the toy world only; its weights source starts with `toy:` so that reports can say so.

Real weights load from safetensors only. Offline (`HF_HUB_OFFLINE=1`) a missing model is an error
that names what is missing and how to provide it.
"""

from __future__ import annotations

import contextlib
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from editsweep.core.hub import hf_offline

if TYPE_CHECKING:
    from editsweep.diffusion.flow import FlowBackbone
    from editsweep.diffusion.qwen_image import QwenImageBackbone

# seeded random weights
PRESETS = ("tiny", "sd-v1-arch", "tiny-ip2p", "tiny-inpaint", "tiny-sd3", "tiny-flux", "sd3-arch", "flux-arch")
PRESETS += ("tiny-qwen-image", "qwen-image-arch")  # diffusion/qwen_image.py
PRESETS += ("tiny-sdxl", "tiny-sdxl-ip2p", "sdxl-arch")  # diffusion/sdxl.py
TRAINED_PRESETS = ("toy",)  # weights shipped in the package (toy/weights/)
TOY_WEIGHTS_PREFIX = "toy:"
# UNet input channels of backbones known before loading: 4 for text-to-image Stable Diffusion, 8 for
# InstructPix2Pix-style models (noisy latent + image latent), 9 for inpainting models (noisy latent +
# mask + masked-image latent). Unlisted Hub ids and folders are
# checked once loaded (`Backbone.unet_in_channels`).
KNOWN_UNET_IN_CHANNELS = {
    "tiny": 4,
    "sd-v1-arch": 4,
    "toy": 4,
    "tiny-ip2p": 8,
    "CompVis/stable-diffusion-v1-4": 4,
    "runwayml/stable-diffusion-v1-5": 4,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": 4,
    "stabilityai/stable-diffusion-2-1": 4,
    "stabilityai/stable-diffusion-2-1-base": 4,
    "stabilityai/stable-diffusion-2-base": 4,
    "timbrooks/instruct-pix2pix": 8,
    "vinesmsuic/magicbrush-jul7": 8,
    "tiny-inpaint": 9,
    "runwayml/stable-diffusion-inpainting": 9,
    "stable-diffusion-v1-5/stable-diffusion-inpainting": 9,
    "stabilityai/stable-diffusion-2-inpainting": 9,
    "tiny-sdxl": 4,
    "sdxl-arch": 4,
    "stabilityai/stable-diffusion-xl-base-1.0": 4,
    "tiny-sdxl-ip2p": 8,
    "diffusers/sdxl-instructpix2pix-768": 8,
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# The DDIM schedule Stable Diffusion 1.x/2.x were trained with.
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


class BackboneLoadError(RuntimeError):
    """The backbone's weights cannot be loaded; the message says which and how to fix it."""


@dataclass
class Backbone:
    """The parts of a latent diffusion model that editing methods share, on one device."""

    name: str
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    random_weights: bool
    source: str = ""  # where trained weights came from, when the name alone does not say
    # The model family methods declare support for (methods/base.py `Method.families`); flow-matching
    # families are diffusion/flow.py's `FlowBackbone`.
    family: ClassVar[str] = "sd"

    @property
    def resolution(self) -> int:
        """Image side in pixels that the UNet was built for."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def unet_in_channels(self) -> int:
        """Channels the UNet takes: 4 (a latent), 8 for InstructPix2Pix models (latent + image latent),
        9 for inpainting models (latent + mask + masked-image latent)."""
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def weights_source(self) -> str:
        """Recorded in every row: where the backbone's weights came from."""
        if self.random_weights:
            return f"{self.name}:random"
        return self.source or self.name

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (B, 77, D) of the prompts, padded to the model's max length, on the
        device (computed where the text encoder is: the CPU when offloaded, diffusion/memory.py)."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.device, self.dtype)

    def unet_text(
        self, embeddings: torch.Tensor, latent_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """What the UNet takes from `encode_text`'s tensor: its `encoder_hidden_states` and
        `added_cond_kwargs` (SD: the tensor itself, none; SDXL unpacks it, diffusion/sdxl.py)."""
        return embeddings, None

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) of images (B, 3, H, W) in [0, 1]: the posterior mean, scaled. The VAE
        runs in its own dtype (SDXL's stays float32 in a float16 backbone)."""
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        return (self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32, from scaled latents."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((x.float() + 1) / 2).clamp(0, 1)



def backbone_companion(
    cache: dict[tuple, torch.nn.Module],
    name: str,
    backbone: Backbone,
    load: Callable[[], torch.nn.Module],
    check: Callable[[torch.nn.Module], None],
) -> torch.nn.Module:
    """A model that works beside the backbone's UNet (a ControlNet, a T2I-Adapter), by `name`: loaded
    by `load` once per (name, backbone, device, dtype), checked against the backbone by `check`,
    frozen, on the backbone's device and dtype; `cache` keeps the last two."""
    key = (name, backbone.name, str(backbone.device), backbone.dtype)
    if key not in cache:
        model = load()
        check(model)
        model.requires_grad_(False).eval().to(backbone.device)
        if model.dtype != backbone.dtype:
            model.to(backbone.dtype)
        while len(cache) >= 2:
            cache.pop(next(iter(cache)))
        cache[key] = model
    return cache[key]


TEXT_TO_IMAGE_UNET = "it needs a text-to-image model's UNet (4 input channels)"


def unet_refusal(
    method: str, backbone: str, in_channels: int = 4, use_instead: str = TEXT_TO_IMAGE_UNET
) -> str | None:
    """Why `method` cannot run on a backbone whose UNet is known by name (`KNOWN_UNET_IN_CHANNELS`) to
    take other than `in_channels` inputs (default: a text-to-image UNet's 4), or None: the
    validation-time twin of `require_unet`."""
    channels = KNOWN_UNET_IN_CHANNELS.get(backbone)
    if channels is None or channels == in_channels:
        return None
    return f"{method} cannot run on backbone {backbone!r} (a UNet with {channels} input channels): {use_instead}"


def require_unet(backbone: Backbone, method: str, in_channels: int, use_instead: str) -> None:
    """Raise ValueError unless the loaded backbone's UNet takes `in_channels` inputs and predicts
    noise: the load-time check of methods bound to their own models (instruct_pix2pix, inpaint),
    for a Hub id or folder that spec validation could not judge."""
    if backbone.unet_in_channels != in_channels:
        raise ValueError(
            f"{method} cannot run on backbone {backbone.name!r}: its UNet takes "
            f"{backbone.unet_in_channels} input channels; {use_instead}"
        )
    if backbone.scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"{method} needs an epsilon-prediction backbone; {backbone.name!r} is not")


def family_of(name: str) -> str | None:
    """The model family ('sd', 'sdxl', 'sd3', 'flux', 'qwen-image') of a backbone as a spec names it, without loading it:
    presets by name, a local folder by its model_index.json, a Hub id from the known ids; None when
    unknown (`load_backbone` then reads the Hub id's model_index.json; failing that, it loads it as
    Stable Diffusion 1.x/2.x)."""
    from editsweep.diffusion.flow import FLOW_PRESETS, KNOWN_FLOW_IDS, folder_family
    from editsweep.diffusion.qwen_image import FAMILY as QWEN_IMAGE, KNOWN_IDS as KNOWN_QWEN_IDS
    from editsweep.diffusion.qwen_image import PRESETS as QWEN_PRESETS
    from editsweep.diffusion.sdxl import KNOWN_SDXL_IDS, SDXL_PRESETS

    if name in QWEN_PRESETS or name in KNOWN_QWEN_IDS:
        return QWEN_IMAGE
    if name in SDXL_PRESETS or name in KNOWN_SDXL_IDS:
        return "sdxl"
    if name in FLOW_PRESETS:
        return FLOW_PRESETS[name]
    if name in PRESETS or name in TRAINED_PRESETS or name in KNOWN_UNET_IN_CHANNELS:
        return "sd"
    if backbone_source(name) == "folder":
        return folder_family(Path(name).expanduser())
    return KNOWN_FLOW_IDS.get(name)


def load_backbone(
    name: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", seed: int = 0
) -> Backbone | FlowBackbone | QwenImageBackbone:
    """A backbone from a preset name, a local diffusers folder, or a Hugging Face Hub id: a
    `FlowBackbone` for the SD3 and FLUX families (diffusion/flow.py), an `SDXLBackbone` for SDXL
    (diffusion/sdxl.py), a `QwenImageBackbone` for Qwen-Image-Edit (diffusion/qwen_image.py), else a
    `Backbone`."""
    device = torch.device(device)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    family = family_of(name)
    if family is None and backbone_source(name) == "hub":
        from editsweep.diffusion.flow import hub_family

        family = hub_family(name)
    if family in ("sd3", "flux"):
        from editsweep.diffusion.flow import load_flow_backbone

        return load_flow_backbone(name, family, device, dtype, seed)
    if family == "qwen-image":
        from editsweep.diffusion.qwen_image import load_qwen_image_backbone

        return load_qwen_image_backbone(name, device, dtype, seed)
    if family == "sdxl":
        from editsweep.diffusion.sdxl import load_sdxl_backbone

        return load_sdxl_backbone(name, device, dtype, seed)
    source = ""
    if name == "toy":
        parts, source = _load_toy()
    elif name == "tiny":
        parts = _build_tiny(seed)
    elif name == "tiny-ip2p":
        parts = _build_tiny(seed, unet_in_channels=8)
    elif name == "tiny-inpaint":
        parts = _build_tiny(seed, unet_in_channels=9)
    elif name == "sd-v1-arch":
        parts = _build_sd_v1_arch(seed)
    else:
        parts = _load_pretrained(name, dtype)
    unet, vae, text_encoder, tokenizer, scheduler = parts
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(device)
        if module.dtype != dtype:
            module.to(dtype)
    return Backbone(
        name=name,
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        device=device,
        dtype=dtype,
        random_weights=name in PRESETS,
        source=source,
    )


# A Hub repo id: `name` or `org/name` (huggingface_hub's rules: letters, digits, - _ .).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def backbone_source(name: str, base_dir: Path | None = None) -> Literal["preset", "folder", "hub"]:
    """Whether a backbone name is a preset, a local folder or a Hugging Face Hub id.

    A folder: what exists locally (relative to `base_dir`, default the current folder), and every
    name that is clearly a path even if it does not exist - absolute, starting with `.` or `~`, with a
    backslash, or not of the Hub's `org/name` shape (e.g. `a/b/c`) - so that a missing folder is
    reported as missing instead of being looked up on the Hub.
    """
    if name in PRESETS or name in TRAINED_PRESETS:
        return "preset"
    path = Path(name).expanduser()
    if name.startswith((".", "~")) or "\\" in name or path.is_absolute() or not _HUB_ID.match(name):
        return "folder"
    return "folder" if ((base_dir or Path.cwd()) / path).exists() else "hub"


def diffusers_folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a diffusers Stable Diffusion folder, or None when it looks like one."""
    if (folder / "model_index.json").exists() or (folder / "unet").is_dir():
        return None
    return (
        f"{folder} is not a diffusers Stable Diffusion folder (no model_index.json or unet/): "
        "save one with `StableDiffusionPipeline.save_pretrained(dir, safe_serialization=True)`"
    )


def _load_pretrained(source: str, dtype: torch.dtype):
    """Each part from `source` (local folder or Hub id), safetensors only, cache first."""
    local = Path(source).expanduser()
    is_folder = backbone_source(source) == "folder"
    if is_folder and not local.is_dir():
        raise BackboneLoadError(f"no such backbone folder {source!r} (seen from {Path.cwd()})")
    if is_folder and (problem := diffusers_folder_problem(local)):
        raise BackboneLoadError(problem)
    src = str(local) if is_folder else source

    def load_all(local_only: bool):
        kw = dict(local_files_only=local_only)
        weights = dict(use_safetensors=True, torch_dtype=dtype, **kw)
        return (
            UNet2DConditionModel.from_pretrained(src, subfolder="unet", **weights),
            AutoencoderKL.from_pretrained(src, subfolder="vae", **weights),
            CLIPTextModel.from_pretrained(src, subfolder="text_encoder", use_safetensors=True, dtype=dtype, **kw),
            CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", model_max_length=77, **kw),
            DDIMScheduler.from_pretrained(src, subfolder="scheduler", **kw),
        )

    # Try the local cache first: it is instant, and offline a network attempt only adds retries.
    with contextlib.suppress(OSError, ValueError):
        return load_all(local_only=True)
    offline = hf_offline()
    if is_folder or offline:
        raise BackboneLoadError(_missing_message(source, is_folder))
    try:
        return load_all(local_only=False)
    except (OSError, ValueError) as err:
        raise BackboneLoadError(f"{_missing_message(source, False)}\ncause: {err}") from err


def _missing_message(source: str, is_folder: bool) -> str:
    if is_folder:
        return (
            f"cannot load a Stable Diffusion backbone from {source}: it needs unet/, vae/, "
            "text_encoder/ (safetensors weights), tokenizer/ and scheduler/ subfolders"
        )
    return (
        f"the weights of backbone {source!r} are not in the local Hugging Face cache and cannot be "
        f"downloaded here. Download them where there is a network "
        f"(`huggingface-cli download {source} --include '*.safetensors' '*.json' '*.txt'`), "
        "or give a local diffusers folder as the backbone, or use the offline presets "
        f"{', '.join(TRAINED_PRESETS + PRESETS)}"
    )


@lru_cache(maxsize=1)
def clip_bpe_tokenizer() -> CLIPTokenizer:
    """The real CLIP tokenizer, built offline from the BPE merges that ship inside open_clip.

    Built the way open_clip's SimpleTokenizer builds its encoder, so ids match open_clip exactly.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=77
    )


def _load_toy():
    """The trained toy backbone's parts and its weights source, `toy:<digest of the weights>`."""
    from editsweep.toy.models import WEIGHTS_DIR, load_backbone_parts, weights_digest

    try:
        unet, vae, text_encoder, scheduler = load_backbone_parts(WEIGHTS_DIR)
    except FileNotFoundError as err:
        raise BackboneLoadError(str(err)) from err
    source = f"{TOY_WEIGHTS_PREFIX}{weights_digest(WEIGHTS_DIR)}"
    return (unet, vae, text_encoder, clip_bpe_tokenizer(), scheduler), source


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed the global RNG for weight initialisation without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build_tiny(seed: int, unet_in_channels: int = 4):
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=unet_in_channels,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    _condition(unet, vae, seed)
    return unet, vae, text_encoder, clip_bpe_tokenizer(), DDIMScheduler(**SD_SCHEDULER)


def _build_sd_v1_arch(seed: int):
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    _condition(unet, vae, seed)
    return unet, vae, text_encoder, clip_bpe_tokenizer(), DDIMScheduler(**SD_SCHEDULER)


@torch.no_grad()
def _condition(unet: UNet2DConditionModel, vae: AutoencoderKL, seed: int) -> None:
    """Make random weights behave like a trained model where the algorithms depend on it.

    As seeded, a random UNet is not DDIM-invertible and a random VAE's latents have std ~0.05
    instead of SD's ~1 (STACK.md). Scaling `conv_out` by 0.1 makes noise predictions small and
    smooth; scaling the posterior mean by c = 1/std and `post_quant_conv` by 1/c gives latents of
    unit std while leaving decode(encode(x)) unchanged.
    """
    unet.conv_out.weight.mul_(0.1)
    unet.conv_out.bias.mul_(0.1)
    gen = torch.Generator().manual_seed(seed)
    side = vae.config.sample_size
    coarse = torch.rand(4, 3, 8, 8, generator=gen)
    probe = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    latents = vae.encode(probe.clamp(0, 1) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    c = 1.0 / latents.std().item()
    mean_channels = vae.config.latent_channels
    vae.quant_conv.weight[:mean_channels].mul_(c)
    vae.quant_conv.bias[:mean_channels].mul_(c)
    vae.post_quant_conv.weight.div_(c)
