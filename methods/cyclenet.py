"""`cyclenet` (Xu et al. 2023, "CycleNet: Rethinking Cycle Consistency in Text-Guided Diffusion for
Image Manipulation"): image-to-image translation by a ControlNet that reads the input image itself,
trained with cycle-consistency losses; sampling as in diffusion/cyclenet.py.

`invert` encodes the input (as the released code, pixels / 127 - 1, so 255 maps to 1.008) and keeps
the image in [0, 1] as the ControlNet's condition. `edit` noises the latent to `strength` of the
schedule and denoises with DDIM (`eta`), the target prompt against the source prompt (the sample's,
or "" when it has none) under classifier-free guidance. Defaults are those of the released demo
(`gradio_cycleNet.py`): 100 steps, strength 0.5, guidance 9, control strength 1, eta 1. Its guess
mode is not offered: the released `apply_model` cannot run it (it concatenates the `None` hint).
Points sharing steps and strength run through one batched loop with their own guidance, scale and
eta; each point draws the same noise from its copies of the samples' generators.

Weights: the released checkpoints (`sled-umich/CycleNet`, e.g. `summer2winter.ckpt`) are pickled
original-LDM checkpoints of the whole model: SD 2.1-base with a fine-tuned UNet decoder, and the
ControlNet (`control_model.*`). editsweep loads safetensors only, so convert one once, where you
trust the file, into two diffusers folders (README "CycleNet weights"): the pipeline, used as the
backbone, and its ControlNet, given as `cyclenet:`. The conversion could not be run here (no
weights); the offline `tiny` ControlNet (built from the backbone's UNet) stands in for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ControlNetModel
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone, unet_refusal
from editsweep.diffusion.controlnet import PRESETS, ControlNetLoadError, load_controlnet
from editsweep.diffusion.cyclenet import cyclenet_sample, cyclenet_start, draw_step_noise
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.inputs import forked, images_tensor, target_prompts
from editsweep.diffusion.points import group_points, per_row
from editsweep.methods.base import Method, State, register_method

CONVERT_HINT = (
    "CycleNet's released weights (sled-umich/CycleNet, e.g. summer2winter.ckpt) are pickled LDM checkpoints: "
    "convert one once into diffusers folders (README, 'CycleNet weights') and give the ControlNet folder as "
    "`cyclenet:` and the pipeline folder as the backbone"
)


class CycleNetParams(Params):
    """Which CycleNet ControlNet (a diffusers folder converted from a released checkpoint, or `tiny`)."""

    cyclenet: str = Field(
        ..., description="CycleNet's ControlNet: a converted diffusers folder or Hub id, or 'tiny' (random)"
    )


class CycleNetEditParams(Params):
    """The released demo's sampling settings."""

    steps: int = Field(100, ge=1, le=1000, description="DDIM steps of the whole schedule")
    strength: float = Field(0.5, ge=0.1, le=1.0, description="denoising strength: fraction of the schedule redone")
    guidance: float = Field(9.0, ge=0.1, le=30, description="target vs source prompt guidance")
    conditioning_scale: float = Field(1.0, ge=0, le=2, description="control strength (all 13 residuals)")
    eta: float = Field(1.0, ge=0, le=1, description="DDIM eta (1: the demo's stochastic sampling)")


def load_cyclenet(name: str, backbone: Backbone) -> ControlNetModel:
    """`load_controlnet` with the conversion recipe in its errors."""
    try:
        return load_controlnet(name, backbone)
    except ControlNetLoadError as err:
        raise ControlNetLoadError(f"{err}\n{CONVERT_HINT}") from err


@register_method
class CycleNet(Method):
    """Image translation by CycleNet's image-conditioned ControlNet from the input's noised latent."""

    name = "cyclenet"
    InvertParams = CycleNetParams
    EditParams = CycleNetEditParams

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """The ControlNet (`tiny`: random, built from the backbone's UNet)."""
        name = invert_params.cyclenet
        return {"cyclenet": f"{name}:random" if name in PRESETS else name}

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        return unet_refusal(cls.name, backbone)

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: CycleNetParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        load_cyclenet(params.cyclenet, backbone)  # fails the group early when it cannot load or fit
        image = images_tensor(samples, backbone.device)
        latents = backbone.encode_images(image * (255 / 254))  # 2 x' - 1 = 255 x / 127 - 1: the release's scaling
        return {"latents": latents.float(), "condition": image.contiguous()}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: CycleNetParams,
        edit_params: Sequence[CycleNetEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        controlnet = load_cyclenet(invert_params.cyclenet, backbone)
        latents, image = state["latents"], state["condition"]
        target = backbone.encode_text(target_prompts(samples))
        source = backbone.encode_text([s.source_prompt or "" for s in samples])
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for (steps, strength), indices in group_points(edit_params, "steps", "strength").items():
            points = [edit_params[k] for k in indices]
            n = len(indices)
            noised_at, count = cyclenet_start(steps, strength)
            noise = draw_step_noise(forked(generators), latents.shape[1:], 1 + count, latents.device)
            x = cyclenet_sample(
                backbone,
                controlnet,
                latents.repeat(n, 1, 1, 1),
                make_schedule(backbone, steps),
                noised_at,
                noise.repeat(1, n, 1, 1, 1),
                image.repeat(n, 1, 1, 1),
                target.repeat(n, 1, 1),
                source.repeat(n, 1, 1),
                per_row(points, "guidance", batch),
                per_row(points, "conditioning_scale", batch),
                per_row(points, "eta", batch),
            )
            for k, images in zip(indices, backbone.decode(x).split(batch)):
                results[k] = images
        return results
