"""`instruct_pix2pix` (Brooks et al. 2023) and `magicbrush` (Zhang et al. 2023, "MagicBrush: A
Manually Annotated Dataset for Instruction-Guided Image Editing": InstructPix2Pix fine-tuned on
MagicBrush's data, the same sampler): instruction editing with the instruction model's own UNet.

No inversion: `invert` encodes the input's image conditioning (diffusion/instruct_pix2pix.py) and
draws each sample's initial noise from its generator, so that every edit point of a sample starts
from the same noise. `edit` denoises with DDIM (eta 0) under the paper's two guidance scales
(text 7.5, image 1.5, 100 steps: the pipeline's and the official `edit_cli.py`'s defaults; the
official script samples with Euler ancestral, which is not reproduced here). Points sharing a step
count run through one batched loop, each row with its own scales and instruction.

The instruction is the sample's `meta["instruction"]` or `meta["editing_instruction"]` when
present, else a template filled from the prompts (diffusion/instructions.py).

The two are separate registered methods, not one method run on two backbones, so that rows and
leaderboards name the model that made them: each refuses the other's released weights, and both
refuse backbones known to be text-to-image models (4 UNet input channels).

`instruct_pix2pix_sdxl`: the same sampler on SDXL (family `sdxl`, diffusion/sdxl.py), for diffusers'
InstructPix2Pix SDXL model (`diffusers/sdxl-instructpix2pix-768`, trained by the diffusers team on
InstructPix2Pix's data at 768 px) or the offline `tiny-sdxl-ip2p`. A separate method because it is a
different model with other defaults: `StableDiffusionXLInstructPix2PixPipeline`'s text guidance 5.0
(image guidance 1.5, 100 steps), and rows name it. It equals that pipeline with DDIM
(tests/diffusion/test_instruct_pix2pix.py): image latents unscaled, the unconditional text zeros
(`force_zeros_for_empty_prompt`), pooled and size conditioning as the backbone packs them. Not
handled: CosXL Edit checkpoints (`is_cosxl_edit`, scaled image latents).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone, require_unet, unet_refusal
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.instruct_pix2pix import UNET_IN_CHANNELS, image_conditioning, ip2p_sample
from editsweep.diffusion.instructions import InstructionParams, instruction
from editsweep.methods.base import Method, Params, State, register_method

INSTRUCT_PIX2PIX_WEIGHTS = "timbrooks/instruct-pix2pix"
INSTRUCT_PIX2PIX_SDXL_WEIGHTS = "diffusers/sdxl-instructpix2pix-768"
MAGICBRUSH_WEIGHTS = "vinesmsuic/magicbrush-jul7"  # MagicBrush's diffusers conversion (unverified here)


class InstructPix2PixParams(InstructionParams):
    """The sampler, the two guidance scales of Eq. 3 and where the instruction comes from."""

    steps: int = Field(100, ge=1, le=1000, description="DDIM steps")
    guidance: float = Field(7.5, ge=0, le=100, description="text guidance s_T")
    image_guidance: float = Field(1.5, ge=0, le=100, description="image guidance s_I")


@register_method
class InstructPix2Pix(Method):
    """Instruction editing in one sampling pass, guided by the instruction and the input image."""

    name = "instruct_pix2pix"
    EditParams = InstructPix2PixParams
    released_weights: ClassVar[str] = INSTRUCT_PIX2PIX_WEIGHTS
    offline_preset: ClassVar[str] = "tiny-ip2p"

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        if refusal := unet_refusal(cls.name, backbone, UNET_IN_CHANNELS, cls._use_instead()):
            return refusal
        for method in (InstructPix2Pix, MagicBrush):
            if method is not cls and backbone == method.released_weights:
                return (
                    f"backbone {backbone!r} holds {method.name}'s weights: use method {method.name} with it, "
                    f"so that rows name the model that made them ({cls.name}: {cls.released_weights})"
                )
        return None

    @classmethod
    def _use_instead(cls) -> str:
        return (
            f"it needs an instruction model's UNet ({UNET_IN_CHANNELS} input channels: latent and image latent); "
            f"use {cls.released_weights!r}, a local diffusers folder of such a model, "
            f"or the offline {cls.offline_preset!r}"
        )

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        require_unet(backbone, self.name, UNET_IN_CHANNELS, self._use_instead())
        image_latents = image_conditioning(backbone, images_tensor(samples, backbone.device))
        shape = (backbone.unet.config.out_channels, *image_latents.shape[2:])
        noise = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators])
        return {"image_latents": image_latents, "noise": noise.to(backbone.device)}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[InstructPix2PixParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        noise, image_latents = state["noise"].float(), state["image_latents"]
        uncond = backbone.encode_text([""] * batch)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        by_steps: dict[int, list[int]] = {}
        for k, p in enumerate(edit_params):
            by_steps.setdefault(p.steps, []).append(k)
        for steps, indices in by_steps.items():
            points = [edit_params[k] for k in indices]
            cond = backbone.encode_text([instruction(s, p) for p in points for s in samples])
            latents = ip2p_sample(
                backbone,
                noise.repeat(len(indices), 1, 1, 1),
                make_schedule(backbone, steps),
                image_latents.repeat(len(indices), 1, 1, 1),
                cond,
                uncond.repeat(len(indices), 1, 1),
                torch.tensor([p.guidance for p in points]).repeat_interleave(batch),
                torch.tensor([p.image_guidance for p in points]).repeat_interleave(batch),
            )
            for k, images in zip(indices, backbone.decode(latents).split(batch)):
                results[k] = images
        return results


@register_method
class MagicBrush(InstructPix2Pix):
    """MagicBrush: InstructPix2Pix's sampler with MagicBrush's fine-tuned weights as the backbone."""

    name = "magicbrush"
    released_weights = MAGICBRUSH_WEIGHTS


class InstructPix2PixSDXLParams(InstructPix2PixParams):
    """InstructPix2PixParams with `StableDiffusionXLInstructPix2PixPipeline`'s text guidance."""

    guidance: float = Field(5.0, ge=0, le=100, description="text guidance s_T (the SDXL pipeline's 5.0)")


@register_method
class InstructPix2PixSDXL(InstructPix2Pix):
    """InstructPix2Pix's sampler on an SDXL instruction model (module docstring)."""

    name = "instruct_pix2pix_sdxl"
    EditParams = InstructPix2PixSDXLParams
    families = ("sdxl",)
    released_weights = INSTRUCT_PIX2PIX_SDXL_WEIGHTS
    offline_preset = "tiny-sdxl-ip2p"
