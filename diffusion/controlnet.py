"""ControlNet's guided sampling (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models") and the loading of its extra model.

A ControlNet is a trainable copy of the UNet's encoder that reads a condition image (edges, depth...)
and adds its features, through zero-initialised convolutions scaled by the conditioning scale, to the
UNet's skip connections and middle block. After diffusers' `StableDiffusionControlNetPipeline`
(`pipelines/controlnet/pipeline_controlnet.py`): classifier-free guidance with the ControlNet run on
both branches (the condition image on both), the scale zeroed outside the `[start, end]` fraction of
the steps (`controlnet_keep`), and guess mode (the ControlNet on the conditional branch only, its
residuals scaled by `logspace(-1, 0)` from the shallowest block to the middle one). Here the scale is
one per batch row (a sweep batches its points), applied to residuals computed at scale 1: the
ControlNet multiplies its residuals by the scale after computing them, so this is the same product.
DDIM (eta 0) as diffusion/ddim.py. tests/diffusion/test_controlnet.py compares with the pipeline.

`load_controlnet` takes a Hub id or local folder (diffusers `ControlNetModel`, safetensors only,
e.g. `lllyasviel/sd-controlnet-canny` for SD 1.5) or the offline preset `tiny`: the backbone's own
UNet encoder copied by `ControlNetModel.from_unet` (any backbone), with its zero convolutions and
condition embedding's last layer given seeded random weights instead of zeros, so that the condition
changes the output. Each ControlNet is loaded once per (name, backbone, device, dtype) in a worker.
"""

from __future__ import annotations

import math

import torch
from diffusers import ControlNetModel

from editsweep.core.hub import load_cache_first
from editsweep.diffusion.backbone import Backbone, backbone_companion
from editsweep.diffusion.ddim import Schedule, ddim_loop, to_epsilon

PRESETS = ("tiny",)
DEFAULT_CONTROLNET = "lllyasviel/sd-controlnet-canny"
_LOADED: dict[tuple[str, str, str, torch.dtype], ControlNetModel] = {}


class ControlNetLoadError(RuntimeError):
    """The ControlNet's weights cannot be loaded; the message says which and how to fix it."""


def load_controlnet(name: str, backbone: Backbone, seed: int = 0) -> ControlNetModel:
    """The ControlNet `name` (`tiny`, a Hub id or a local folder) on the backbone's device and dtype,
    checked against the backbone's UNet; cached, the last two kept."""
    return backbone_companion(
        _LOADED,
        name,
        backbone,
        lambda: _build_tiny(backbone, seed) if name in PRESETS else _load_pretrained(name, backbone.dtype),
        lambda model: check_compatible(model, backbone, name),
    )


def check_compatible(model: ControlNetModel, backbone: Backbone, name: str) -> None:
    """Raise a ValueError naming both when the ControlNet's residuals cannot feed the backbone's UNet."""
    control, unet = model.config, backbone.unet.config
    mine = (control.cross_attention_dim, tuple(control.block_out_channels), control.in_channels)
    theirs = (unet.cross_attention_dim, tuple(unet.block_out_channels), unet.in_channels)
    if mine != theirs:
        raise ValueError(
            f"ControlNet {name!r} (cross-attention {mine[0]}, blocks {mine[1]}, {mine[2]} input channels) does not "
            f"fit backbone {backbone.name!r} (cross-attention {theirs[0]}, blocks {theirs[1]}, {theirs[2]} input "
            "channels): use a ControlNet trained for this base model, or `tiny` (built from the backbone's UNet)"
        )
    factor = 2 ** (len(control.conditioning_embedding_out_channels) - 1)
    if factor != backbone.vae_scale_factor:
        raise ValueError(
            f"ControlNet {name!r} downsamples its condition image by {factor}, backbone {backbone.name!r}'s VAE "
            f"by {backbone.vae_scale_factor}"
        )


def _build_tiny(backbone: Backbone, seed: int) -> ControlNetModel:
    """`ControlNetModel.from_unet` of the backbone's UNet (float32 copy), zero layers made seeded random."""
    blocks = int(math.log2(backbone.vae_scale_factor)) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ControlNetModel.from_unet(
            backbone.unet,
            conditioning_embedding_out_channels=(16, 32, 96, 256, 256)[:blocks],
        )
        embedding_out = model.controlnet_cond_embedding.conv_out
        zero_layers = [*model.controlnet_down_blocks, model.controlnet_mid_block, embedding_out]
        with torch.no_grad():
            for layer in zero_layers:
                torch.nn.init.normal_(layer.weight, std=0.1)
                torch.nn.init.normal_(layer.bias, std=0.01)
    return model


def _load_pretrained(source: str, dtype: torch.dtype) -> ControlNetModel:
    """A ControlNet from `source` (local folder or Hub id), safetensors only, cache first."""

    def load(src: str, local_only: bool) -> ControlNetModel:
        return ControlNetModel.from_pretrained(
            src, use_safetensors=True, torch_dtype=dtype, local_files_only=local_only
        )

    return load_cache_first(source, load, lambda is_folder: _missing_message(source, is_folder), ControlNetLoadError)


def _missing_message(source: str, is_folder: bool) -> str:
    if is_folder:
        return (
            f"cannot load a ControlNet from {source}: it needs config.json and "
            "diffusion_pytorch_model.safetensors (a diffusers ControlNetModel)"
        )
    return (
        f"the ControlNet {source!r} is not in the local Hugging Face cache and cannot be downloaded here. "
        f"Download it where there is a network (`huggingface-cli download {source} --include '*.safetensors' "
        f"'*.json'`; for SD 1.5 e.g. {DEFAULT_CONTROLNET}), or give a local folder with config.json and "
        f"diffusion_pytorch_model.safetensors, or use the offline preset {', '.join(PRESETS)}"
    )


def keep(step: int, steps: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """1 where the step lies inside each row's [start, end] fraction of the steps, else 0 (the
    pipeline's `controlnet_keep`)."""
    outside = (step / steps < start) | ((step + 1) / steps > end)
    return 1.0 - outside.float()


def predict_noise_controlnet(
    backbone: Backbone,
    controlnet: ControlNetModel,
    latents: torch.Tensor,
    t: torch.Tensor,
    condition: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: torch.Tensor,
    scale: torch.Tensor,
    guess_mode: bool = False,
    alpha: float | None = None,
) -> torch.Tensor:
    """The guided noise prediction eps_u + g (eps_c - eps_u) with the ControlNet's residuals, scaled
    per row by `scale`, added to the UNet's; in guess mode the ControlNet sees the conditional
    branch only (module docstring)."""
    batch, dtype = latents.shape[0], backbone.unet.dtype
    x = torch.cat([latents, latents]).to(dtype)
    text = torch.cat([uncond, cond]).to(dtype)
    image = condition.to(latents.device, dtype)
    control_rows = slice(batch, None) if guess_mode else slice(None)
    down, mid = controlnet(
        x[control_rows],
        t,
        encoder_hidden_states=text[control_rows],
        controlnet_cond=image if guess_mode else torch.cat([image, image]),
        conditioning_scale=1.0,
        guess_mode=guess_mode,
        return_dict=False,
    )
    s = scale.to(latents.device, dtype)
    s = s if guess_mode else torch.cat([s, s])

    def scaled(residual: torch.Tensor) -> torch.Tensor:
        residual = residual * s.view(-1, 1, 1, 1)
        return torch.cat([torch.zeros_like(residual), residual]) if guess_mode else residual

    out = backbone.unet(
        x,
        t,
        encoder_hidden_states=text,
        down_block_additional_residuals=[scaled(d) for d in down],
        mid_block_additional_residual=scaled(mid),
    ).sample.float()
    eps_u, eps_c = to_epsilon(backbone, out, x, alpha).chunk(2)
    return eps_u + guidance.to(latents.device, torch.float32).view(-1, 1, 1, 1) * (eps_c - eps_u)


@torch.no_grad()
def controlnet_sample(
    backbone: Backbone,
    controlnet: ControlNetModel,
    latents: torch.Tensor,
    schedule: Schedule,
    condition: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: torch.Tensor,
    scale: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    guess_mode: bool = False,
) -> torch.Tensor:
    """Denoise pure-noise latents to x_0 with DDIM (eta 0), guided by the text (per-row `guidance`)
    and the condition images (per-row `scale`, active in each row's [start, end] step fraction)."""

    def predict(i: int, x: torch.Tensor, alpha: float) -> torch.Tensor:
        row_scale = scale.float() * keep(i, schedule.steps, start.float(), end.float())
        return predict_noise_controlnet(
            backbone, controlnet, x, schedule.timesteps[i], condition, cond, uncond, guidance, row_scale,
            guess_mode, alpha,
        )

    return ddim_loop(latents, schedule, predict)
