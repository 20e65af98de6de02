"""Memory options for big backbones, applied once after loading (bench/worker.py), for every kind
of backbone: diffusion/backbone.py `Backbone` (SD 1.x/2.x and SDXL UNets), diffusion/flow.py
`FlowBackbone` (SD3, FLUX MMDiTs) and diffusion/qwen_image.py `QwenImageBackbone`.

Every option is one diffusers or torch mechanism that changes where or in how many pieces a
computation runs, never what it computes, so results agree with the plain backbone to float
tolerance (tests/diffusion/test_memory.py) and the options are not part of any task key; the
run's manifest records them with the spec.

- `offload_text_encoders`: the text encoders (CLIP; CLIP + T5 for SD3/FLUX, where T5-XXL alone is
  9.5 GB in bfloat16) stay on the CPU in the backbone's dtype; prompts are encoded there and only
  the embeddings move to the device. The spec dtype, not float32, so that the weights and hence the
  embeddings are those of the backbone without offload (and half the host memory of float32).
- `attention_slicing`: diffusers' `UNet2DConditionModel.set_attention_slice` (`SlicedAttnProcessor`
  on every attention layer: attention computed a slice of heads at a time). diffusers offers none
  for the SD3 and FLUX transformers, so it is refused for those families at spec validation.
  With PyTorch's scaled-dot-product attention (diffusers' default processor) the attention
  matrix is never materialised, so slicing saves memory only where SDPA falls back to its math
  kernel; BENCHMARKS.md has the CPU figures.
- `vae_slicing`: diffusers' `AutoencoderKL.enable_slicing`, which encodes and decodes a batch one
  image at a time.

VAE tiling (`AutoencoderKL.enable_tiling`) is left out on purpose: where it applies (images larger
than the VAE's `sample_size`) it blends overlapping tiles and changes the pixels, so it would have
to be part of the task key, and at a backbone's own resolution, the one editsweep feeds it, it
never applies.

Methods that install their own attention processors use them instead of the sliced ones while
they run: Prompt-to-Prompt (diffusion/attention.py) and the unified attention of InfEdit
(unified_attention.py) in every layer; MasaCtrl (mutual_attention.py) and Plug-and-Play
(plug_and_play.py) in the layers they control, with SDPA in the others; the map recorders
(masks.py, ledits.py) only in the layers they record, keeping the sliced ones elsewhere; per-layer
conditioning (per_layer.py) wraps the sliced ones, so it stays sliced. Each puts the UNet's own processors, the sliced
ones, back when it is done, so slicing holds again for the next call (tested for P2P, MasaCtrl and
Plug-and-Play).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from editsweep.diffusion.backbone import Backbone
    from editsweep.diffusion.flow import FlowBackbone

# Families whose denoiser is a transformer for which diffusers has no attention slicing.
NO_ATTENTION_SLICING = {
    "sd3": "SD3Transformer2DModel",
    "flux": "FluxTransformer2DModel",
    "qwen-image": "QwenImageTransformer2DModel",
}

SliceSize = Literal["auto", "max"] | int


@dataclass(frozen=True)
class MemoryOptions:
    """How a backbone is laid out in memory; none of it changes results beyond float tolerance.

    `attention_slicing`: None (off), "auto" (half the heads per slice), "max" (one head at a time)
    or a number of heads per slice, as diffusers' `set_attention_slice` takes it.
    """

    offload_text_encoders: bool = False
    attention_slicing: SliceSize | None = None
    vae_slicing: bool = False

    @property
    def any(self) -> bool:
        """Whether any option differs from the default layout."""
        return self != MemoryOptions()

    def as_dict(self) -> dict[str, Any]:
        """The options as plain values (recorded with the worker's backbone)."""
        return asdict(self)


def memory_refusal(family: str | None, options: MemoryOptions) -> str | None:
    """Why `options` cannot apply to a backbone of `family` (None when they can, or the family is
    not known before loading: `apply_memory_options` checks the loaded model)."""
    if options.attention_slicing is not None and family in NO_ATTENTION_SLICING:
        return (
            f"attention_slicing: diffusers offers no attention slicing for {family!r} backbones "
            f"({NO_ATTENTION_SLICING[family]}); remove it, and use offload_text_encoders, vae_slicing "
            "or dtype bfloat16 to save memory"
        )
    return None


def text_encoders(backbone: Backbone | FlowBackbone) -> list[torch.nn.Module]:
    """The backbone's text encoders (one for SD 1.x/2.x; CLIP and T5 for FLUX; two CLIPs and T5 for SD3)."""
    if hasattr(backbone, "pipe"):
        components = backbone.pipe.components
        return [m for name, m in sorted(components.items()) if name.startswith("text_encoder") and m is not None]
    return [backbone.text_encoder]


def apply_memory_options(backbone: Backbone | FlowBackbone, options: MemoryOptions) -> None:
    """Lay the loaded `backbone` out as `options` say, in place.

    Raises ValueError for attention slicing on a model that diffusers cannot slice (a Hub id or
    folder whose family spec validation could not know).
    """
    from editsweep.diffusion.backbone import Backbone  # SD 1.x/2.x and SDXL: a UNet

    denoiser = backbone.unet if isinstance(backbone, Backbone) else backbone.pipe.transformer
    if options.attention_slicing is not None:
        if not hasattr(denoiser, "set_attention_slice"):
            raise ValueError(
                f"backbone {backbone.name!r}: attention_slicing: diffusers offers no attention slicing for "
                f"{type(denoiser).__name__}; remove it from the backbone's spec"
            )
        try:
            denoiser.set_attention_slice(options.attention_slicing)
        except ValueError as err:
            raise ValueError(
                f"backbone {backbone.name!r}: attention_slicing {options.attention_slicing!r}: {err} "
                "(a number is heads per slice; 'auto' and 'max' always fit)"
            ) from err
    if options.vae_slicing:
        (backbone.vae if isinstance(backbone, Backbone) else backbone.pipe.vae).enable_slicing()
    if options.offload_text_encoders:
        for encoder in text_encoders(backbone):
            encoder.to("cpu")
