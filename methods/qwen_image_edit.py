"""`qwen_image_edit` (Qwen team 2025, "Qwen-Image Technical Report", the image-editing model
Qwen-Image-Edit): instruction editing with diffusers' `QwenImageEditPipeline`, step for step
(diffusion/qwen_image.py; tests/methods/test_qwen_image_edit.py compares with the pipeline itself).

The pipeline's defaults: 50 Euler steps of its flow-matching schedule and true classifier-free
guidance of scale 4.0 against the negative prompt " " (the pipeline's example; any negative prompt
turns true CFG on there), the guided prediction rescaled to the conditional one's norm. Both are
grid axes; points sharing a step count run through one batched loop, each row with its own scale,
instruction and negative prompt.

No inversion: `invert` resizes each input as the pipeline does for its conditioning (an area of
the backbone's `resolution ** 2`, 1024 ** 2 for the released model), encodes it with the VAE and draws
the sample's initial noise from its own generator, so that every edit point of a sample starts from
the same noise. The output is generated at the input's size (the pipeline's `height`/`width`; sizes
that are not multiples of 16 px are generated at the multiple below and resized back).

The instruction is the sample's `meta["instruction"]` or `meta["editing_instruction"]` when present,
else a template filled from the prompts (diffusion/instructions.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.inputs import images_tensor, to_pil
from editsweep.diffusion.instructions import InstructionParams, instruction
from editsweep.diffusion.qwen_image import NEGATIVE_PROMPT, QwenImageBackbone
from editsweep.methods.base import Method, Params, State, register_method


class QwenImageEditParams(InstructionParams):
    """The sampler, the true-CFG scale and negative prompt, and where the instruction comes from."""

    # At 1 step the schedule's stretch to the terminal sigma (shift_terminal 0.02) divides by zero: NaN.
    steps: int = Field(50, ge=2, le=1000, description="Euler steps (the pipeline's default 50; at least 2)")
    true_cfg_scale: float = Field(
        4.0, ge=0, le=50, description="true classifier-free guidance (the pipeline's default 4.0; <= 1: none)"
    )
    negative_prompt: str = Field(NEGATIVE_PROMPT, description="what true CFG guides away from (pipeline example ' ')")


def _pixels(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) / 255 for i in images])).permute(0, 3, 1, 2)


def _generated_size(backbone: QwenImageBackbone, samples: Sequence[Sample]) -> tuple[int, int]:
    """The size the images are generated at: the input's, down to multiples of 16 px (the pipeline's)."""
    f = backbone.vae_scale_factor * 2
    width, height = samples[0].image.size
    return height // f * f, width // f * f


def _require(backbone: object) -> QwenImageBackbone:
    if not isinstance(backbone, QwenImageBackbone):
        raise ValueError(
            f"qwen_image_edit needs a Qwen-Image-Edit backbone (family qwen-image), not {type(backbone).__name__}: "
            "use 'Qwen/Qwen-Image-Edit', a local folder of a QwenImageEditPipeline, or the offline 'tiny-qwen-image'"
        )
    return backbone


@register_method
class QwenImageEdit(Method):
    """Instruction editing in one sampling pass, conditioned on the input image's latents and on the
    Qwen2.5-VL encoding of the instruction with the image."""

    name = "qwen_image_edit"
    EditParams = QwenImageEditParams
    families = ("qwen-image",)

    def invert(
        self,
        backbone: QwenImageBackbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        backbone = _require(backbone)
        images = images_tensor(samples, torch.device("cpu"))
        conditions = backbone.condition_images(images)
        return {
            "noise": backbone.noise(list(generators), *_generated_size(backbone, samples)),
            "image_latents": backbone.image_latents(conditions),
            "conditions": _pixels(conditions),  # the VL encoder's view of each input, 8-bit exact
        }

    def edit(
        self,
        backbone: QwenImageBackbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[QwenImageEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        backbone = _require(backbone)
        batch = len(samples)
        out_w, out_h = samples[0].image.size
        height, width = _generated_size(backbone, samples)
        conditions = [to_pil(c) for c in state["conditions"]]
        condition_size = (conditions[0].height, conditions[0].width)
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        by_steps: dict[int, list[int]] = {}
        for k, p in enumerate(edit_params):
            by_steps.setdefault(p.steps, []).append(k)
        for steps, indices in by_steps.items():
            points = [edit_params[k] for k in indices]
            n = len(points)
            scales = torch.tensor([p.true_cfg_scale for p in points]).repeat_interleave(batch)
            text = backbone.encode_instructions([instruction(s, p) for p in points for s in samples], conditions * n)
            negative = self._negative(backbone, points, conditions)
            latents = backbone.sample(
                state["noise"].repeat(n, 1, 1),
                state["image_latents"].repeat(n, 1, 1),
                text,
                negative,
                scales,
                steps,
                (height, width),
                condition_size,
            )
            images = backbone.decode_packed(latents, height, width)
            if (height, width) != (out_h, out_w):
                images = torch.nn.functional.interpolate(
                    images, size=(out_h, out_w), mode="bicubic", antialias=True
                ).clamp(0, 1)
            for k, chunk in zip(indices, images.split(batch)):
                results[k] = chunk
        return results

    @staticmethod
    def _negative(
        backbone: QwenImageBackbone, points: list[QwenImageEditParams], conditions: list[Image.Image]
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The negative prompts' embeddings, one row per (point, sample), None when no point is guided;
        encoded once per sample when every point has the same negative prompt."""
        if all(p.true_cfg_scale <= 1 for p in points):
            return None
        prompts = {p.negative_prompt for p in points}
        if len(prompts) > 1:
            return backbone.encode_instructions(
                [p.negative_prompt for p in points for _ in conditions], conditions * len(points)
            )
        embeds, mask = backbone.encode_instructions([prompts.pop()] * len(conditions), conditions)
        return embeds.repeat(len(points), 1, 1), None if mask is None else mask.repeat(len(points), 1)
