"""`controlnet` (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models"):
generation with the target prompt, conditioned on a map extracted from the input image.

No inversion: `invert` extracts the condition (a named extractor of diffusion/conditions.py: Canny
edges with ControlNet's thresholds 100 / 200 by default) and draws each sample's initial noise from
its generator, so that every edit point of a sample starts from the same noise. `edit` denoises with
DDIM (eta 0) under classifier-free guidance and the ControlNet's residuals (diffusion/controlnet.py),
with the pipeline's defaults: conditioning scale 1, guidance 7.5, 50 steps, control over all steps,
guess mode off. Points sharing a step count and guess mode run through one batched loop, each row
with its own guidance, conditioning scale and control window.

The ControlNet (`controlnet:` a Hub id or folder, default `lllyasviel/sd-controlnet-canny` for SD 1.5,
or the offline random `tiny` built from the backbone's UNet) must fit the backbone's UNet: a mismatch
is known only once both are loaded, so it fails this method's tasks with a message naming both.
Backbones known to be instruction models (8 UNet input channels) are refused at validation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, model_validator

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone, unet_refusal
from editsweep.diffusion.conditions import ConditionParams, condition_sources, extract_condition
from editsweep.diffusion.controlnet import DEFAULT_CONTROLNET, PRESETS, controlnet_sample, load_controlnet
from editsweep.diffusion.ddim import draw_noise, make_schedule
from editsweep.diffusion.inputs import target_prompts
from editsweep.diffusion.points import group_points, per_row
from editsweep.methods.base import Method, Params, State, register_method

UNET_IN_CHANNELS = 4


class ControlNetParams(ConditionParams):
    """Which ControlNet, and the condition it reads (changes what `invert` prepares)."""

    controlnet: str = Field(
        DEFAULT_CONTROLNET, description="ControlNet weights: Hub id, local folder, or 'tiny' (random, offline)"
    )


class ControlNetEditParams(Params):
    """The sampler, the text guidance and how strongly and when the condition acts."""

    conditioning_scale: float = Field(1.0, ge=0, le=10, description="ControlNet residual scale")
    guidance: float = Field(7.5, ge=0, le=100, description="text guidance")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    control_start: float = Field(0.0, ge=0, le=1, description="fraction of the steps where control starts")
    control_end: float = Field(1.0, ge=0, le=1, description="fraction of the steps where control ends")
    guess_mode: bool = Field(False, description="ControlNet on the conditional branch only, residuals ramped")

    @model_validator(mode="after")
    def _ordered_window(self) -> ControlNetEditParams:
        if self.control_start > self.control_end:
            raise ValueError(f"control_start {self.control_start} is after control_end {self.control_end}")
        return self


@register_method
class ControlNet(Method):
    """Text-to-image generation with the target prompt, controlled by a map of the input image."""

    name = "controlnet"
    InvertParams = ControlNetParams
    EditParams = ControlNetEditParams

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """The ControlNet (`tiny`: random, built from the backbone's UNet)."""
        name = invert_params.controlnet
        return {"controlnet": f"{name}:random" if name in PRESETS else name, **condition_sources(invert_params)}

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        return unet_refusal(cls.name, backbone, UNET_IN_CHANNELS)

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: ControlNetParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        load_controlnet(params.controlnet, backbone)  # fails the group early when it cannot load or fit
        condition = extract_condition(samples, params).to(backbone.device)
        return {"condition": condition, "noise": draw_noise(backbone, generators)}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: ControlNetParams,
        edit_params: Sequence[ControlNetEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        controlnet = load_controlnet(invert_params.controlnet, backbone)
        noise, condition = state["noise"].float(), state["condition"]
        cond, uncond = backbone.encode_text(target_prompts(samples)), backbone.encode_text([""] * batch)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for (steps, guess_mode), indices in group_points(edit_params, "steps", "guess_mode").items():
            points = [edit_params[k] for k in indices]
            n = len(indices)
            latents = controlnet_sample(
                backbone,
                controlnet,
                noise.repeat(n, 1, 1, 1),
                make_schedule(backbone, steps),
                condition.repeat(n, 1, 1, 1),
                cond.repeat(n, 1, 1),
                uncond.repeat(n, 1, 1),
                per_row(points, "guidance", batch),
                per_row(points, "conditioning_scale", batch),
                per_row(points, "control_start", batch),
                per_row(points, "control_end", batch),
                guess_mode,
            )
            for k, images in zip(indices, backbone.decode(latents).split(batch)):
                results[k] = images
        return results
