"""`t2i_adapter` (Mou et al. 2024, "T2I-Adapter: Learning Adapters to Dig out More Controllable
Ability for Text-to-Image Diffusion Models"): generation with the target prompt, conditioned through
a T2I-Adapter on a map extracted from the input image.

No inversion: `invert` extracts the condition (a named extractor of diffusion/conditions.py, Canny
edges 100 / 200 by default, as methods/controlnet.py) and draws each sample's initial noise from its
generator, so that every edit point of a sample starts from the same noise. `edit` denoises with DDIM
(eta 0) under classifier-free guidance plus the adapter's features (diffusion/t2i_adapter.py), with
the pipeline's defaults: adapter conditioning scale 1, the adapter over every step (factor 1),
guidance 7.5, 50 steps. Points sharing a step count run through one batched loop, each row with its
own guidance, scale and factor.

The adapter (`adapter:` a Hub id or folder, default `TencentARC/t2iadapter_canny_sd15v2` for SD 1.5,
or the offline random `tiny` sized to the backbone's UNet) must fit the backbone's UNet: a mismatch is
known only once both are loaded, so it fails this method's tasks with a message naming both.
Backbones known to be instruction or inpainting models are refused at validation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone, unet_refusal
from editsweep.diffusion.conditions import ConditionParams, condition_sources, extract_condition
from editsweep.diffusion.ddim import draw_noise, make_schedule
from editsweep.diffusion.inputs import target_prompts
from editsweep.diffusion.t2i_adapter import DEFAULT_ADAPTER, PRESETS, adapter_input, adapter_sample, load_adapter
from editsweep.diffusion.points import group_points, per_row
from editsweep.methods.base import Method, Params, State, register_method


class T2IAdapterParams(ConditionParams):
    """Which adapter, and the condition it reads (changes what `invert` prepares)."""

    adapter: str = Field(DEFAULT_ADAPTER, description="T2I-Adapter weights: Hub id, local folder, or 'tiny' (random)")


class T2IAdapterEditParams(Params):
    """The sampler, the text guidance and how strongly and how long the adapter acts."""

    adapter_conditioning_scale: float = Field(1.0, ge=0, le=10, description="scale of the adapter's features")
    adapter_conditioning_factor: float = Field(
        1.0, ge=0, le=1, description="fraction of the first steps with the adapter"
    )
    guidance: float = Field(7.5, ge=0, le=100, description="text guidance")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")


@register_method
class T2IAdapterMethod(Method):
    """Text-to-image generation with the target prompt, steered by a T2I-Adapter reading a map of the input."""

    name = "t2i_adapter"
    InvertParams = T2IAdapterParams
    EditParams = T2IAdapterEditParams

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """The adapter (`tiny`: random, sized to the backbone's UNet)."""
        name = invert_params.adapter
        return {"adapter": f"{name}:random" if name in PRESETS else name, **condition_sources(invert_params)}

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        return unet_refusal(cls.name, backbone)

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: T2IAdapterParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        adapter = load_adapter(params.adapter, backbone)  # fails the group early when it cannot load or fit
        condition = adapter_input(adapter, extract_condition(samples, params), params.adapter)
        return {"condition": condition.to(backbone.device), "noise": draw_noise(backbone, generators)}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: T2IAdapterParams,
        edit_params: Sequence[T2IAdapterEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        adapter = load_adapter(invert_params.adapter, backbone)
        noise, condition = state["noise"].float(), state["condition"]
        cond, uncond = backbone.encode_text(target_prompts(samples)), backbone.encode_text([""] * batch)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        for (steps,), indices in group_points(edit_params, "steps").items():
            points = [edit_params[k] for k in indices]
            n = len(indices)
            latents = adapter_sample(
                backbone,
                adapter,
                noise.repeat(n, 1, 1, 1),
                make_schedule(backbone, steps),
                condition.repeat(n, 1, 1, 1),
                cond.repeat(n, 1, 1),
                uncond.repeat(n, 1, 1),
                per_row(points, "guidance", batch),
                per_row(points, "adapter_conditioning_scale", batch),
                per_row(points, "adapter_conditioning_factor", batch),
            )
            for k, images in zip(indices, backbone.decode(latents).split(batch)):
                results[k] = images
        return results
