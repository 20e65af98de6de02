"""T2I-Adapter's guided sampling (Mou et al. 2024, "T2I-Adapter: Learning Adapters to Dig out More
Controllable Ability for Text-to-Image Diffusion Models") and the loading of its extra model.

A T2I-Adapter is a small convolutional network (pixel-unshuffle, then one residual block per UNet
resolution) that maps the condition image to one feature map per UNet down block; the features are
computed once, before sampling, and added inside the UNet's encoder at every step (diffusers'
`down_intrablock_additional_residuals`). After diffusers' `StableDiffusionAdapterPipeline`
(`pipelines/t2i_adapter/pipeline_stable_diffusion_adapter.py`): the features multiplied by
`adapter_conditioning_scale` and added on both classifier-free-guidance branches. The fraction of the
steps with the adapter (`adapter_conditioning_factor`, steps `i < int(steps * factor)`) is the SDXL
adapter pipeline's (`pipeline_stable_diffusion_xl_adapter.py`), the paper's "early steps" control
(Sec. 4, the structure is settled early). Scale and factor are one per batch row (a sweep batches its
points). DDIM (eta 0) as diffusion/ddim.py. tests/diffusion/test_t2i_adapter.py compares with the pipeline.

`load_adapter` takes a Hub id or local folder (diffusers `T2IAdapter`, safetensors only; e.g.
`TencentARC/t2iadapter_canny_sd15v2`, whose Canny adapter reads 1 channel; `..._depth_sd15v2`,
`..._seg_sd14v1` for the depth and segmentation conditions) or the offline preset
`tiny`: a seeded random `full_adapter` sized to the backbone's UNet blocks and VAE factor, reading
3 channels. Each adapter is loaded once per (name, backbone, device, dtype) in a worker.
"""

from __future__ import annotations

import torch
from diffusers import T2IAdapter

from editsweep.core.hub import load_cache_first
from editsweep.diffusion.backbone import Backbone, backbone_companion
from editsweep.diffusion.ddim import Schedule, ddim_loop, to_epsilon

PRESETS = ("tiny",)
DEFAULT_ADAPTER = "TencentARC/t2iadapter_canny_sd15v2"
_LOADED: dict[tuple[str, str, str, torch.dtype], T2IAdapter] = {}


class AdapterLoadError(RuntimeError):
    """The T2I-Adapter's weights cannot be loaded; the message says which and how to fix it."""


def load_adapter(name: str, backbone: Backbone, seed: int = 0) -> T2IAdapter:
    """The T2I-Adapter `name` (`tiny`, a Hub id or a local folder) on the backbone's device and dtype,
    checked against the backbone's UNet; cached, the last two kept."""
    return backbone_companion(
        _LOADED,
        name,
        backbone,
        lambda: _build_tiny(backbone, seed) if name in PRESETS else _load_pretrained(name, backbone.dtype),
        lambda model: check_compatible(model, backbone, name),
    )


def check_compatible(model: T2IAdapter, backbone: Backbone, name: str) -> None:
    """Raise a ValueError naming both when the adapter's features cannot feed the backbone's UNet."""
    adapter, unet = model.config, backbone.unet.config
    mine = (tuple(adapter.channels), adapter.downscale_factor)
    theirs = (tuple(unet.block_out_channels), backbone.vae_scale_factor)
    if mine != theirs:
        raise ValueError(
            f"T2I-Adapter {name!r} (feature channels {mine[0]}, downscale {mine[1]}) does not fit backbone "
            f"{backbone.name!r} (UNet blocks {theirs[0]}, VAE factor {theirs[1]}): use an adapter trained for "
            "this base model, or `tiny` (sized to the backbone's UNet)"
        )


def adapter_input(model: T2IAdapter, condition: torch.Tensor, name: str) -> torch.Tensor:
    """The condition images (B, 3, H, W) as the adapter reads them: unchanged for a 3-channel adapter,
    the single map for a 1-channel one (Canny, depth: the extractors repeat their map on 3 channels)."""
    channels = model.config.in_channels
    if channels == condition.shape[1]:
        return condition
    if channels == 1 and bool((condition == condition[:, :1]).all()):
        return condition[:, :1]
    raise ValueError(
        f"T2I-Adapter {name!r} reads {channels}-channel condition images, the condition gives "
        f"{condition.shape[1]} different channels: use a condition that gives one map (canny, gray, depth) "
        "or an adapter for colour images"
    )


def _build_tiny(backbone: Backbone, seed: int) -> T2IAdapter:
    """A seeded random `full_adapter` (3 input channels) sized to the backbone's UNet and VAE."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T2IAdapter(
            in_channels=3,
            channels=list(backbone.unet.config.block_out_channels),
            num_res_blocks=2,
            downscale_factor=backbone.vae_scale_factor,
            adapter_type="full_adapter",
        )


def _load_pretrained(source: str, dtype: torch.dtype) -> T2IAdapter:
    """A T2I-Adapter from `source` (local folder or Hub id), safetensors only, cache first."""

    def load(src: str, local_only: bool) -> T2IAdapter:
        return T2IAdapter.from_pretrained(src, use_safetensors=True, torch_dtype=dtype, local_files_only=local_only)

    return load_cache_first(source, load, lambda is_folder: _missing_message(source, is_folder), AdapterLoadError)


def _missing_message(source: str, is_folder: bool) -> str:
    if is_folder:
        return (
            f"cannot load a T2I-Adapter from {source}: it needs config.json and "
            "diffusion_pytorch_model.safetensors (a diffusers T2IAdapter)"
        )
    return (
        f"the T2I-Adapter {source!r} is not in the local Hugging Face cache and cannot be downloaded here. "
        f"Download it where there is a network (`huggingface-cli download {source}`; for SD 1.5 e.g. "
        f"{DEFAULT_ADAPTER}). Only safetensors are loaded: a repository with only diffusion_pytorch_model.bin "
        "must be converted once where it is trusted (`T2IAdapter.from_pretrained(...).save_pretrained(folder)`) "
        f"and the folder given instead; or use the offline preset {', '.join(PRESETS)}"
    )


def predict_noise_adapter(
    backbone: Backbone,
    latents: torch.Tensor,
    t: torch.Tensor,
    features: list[torch.Tensor] | None,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: torch.Tensor,
    scale: torch.Tensor,
    alpha: float | None = None,
) -> torch.Tensor:
    """The guided noise prediction eps_u + g (eps_c - eps_u) with the adapter's features (computed
    at scale 1), scaled per row by `scale`, added on both branches; `features` None: none added."""
    dtype = backbone.unet.dtype
    x = torch.cat([latents, latents]).to(dtype)
    residuals = None
    if features is not None:
        s = scale.to(latents.device, dtype).view(-1, 1, 1, 1)
        residuals = [torch.cat([f * s, f * s]) for f in features]
    out = backbone.unet(
        x, t, encoder_hidden_states=torch.cat([uncond, cond]).to(dtype), down_intrablock_additional_residuals=residuals
    ).sample.float()
    eps_u, eps_c = to_epsilon(backbone, out, x, alpha).chunk(2)
    return eps_u + guidance.to(latents.device, torch.float32).view(-1, 1, 1, 1) * (eps_c - eps_u)


@torch.no_grad()
def adapter_sample(
    backbone: Backbone,
    adapter: T2IAdapter,
    latents: torch.Tensor,
    schedule: Schedule,
    condition: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: torch.Tensor,
    scale: torch.Tensor,
    factor: torch.Tensor,
) -> torch.Tensor:
    """Denoise pure-noise latents to x_0 with DDIM (eta 0), guided by the text (per-row `guidance`) and
    the adapter's features of `condition` (already in the adapter's channels; per-row `scale`, over the
    first `int(steps * factor)` steps of each row)."""
    features = adapter(condition.to(latents.device, adapter.dtype))
    active_steps = (schedule.steps * factor.double()).floor()  # int() of a non-negative float

    def predict(i: int, x: torch.Tensor, alpha: float) -> torch.Tensor:
        row_scale = scale.float() * (i < active_steps).float()
        used = features if bool((row_scale != 0).any()) else None
        return predict_noise_adapter(
            backbone, x, schedule.timesteps[i], used, cond, uncond, guidance, row_scale, alpha
        )

    return ddim_loop(latents, schedule, predict)
