"""`flux_kontext` (Labs et al. 2025, "FLUX.1 Kontext: Flow Matching for In-Context Image Generation
and Editing in Latent Space"): instruction editing by a FLUX transformer that reads the input image
as context, diffusers' `FluxKontextPipeline` step for step.

The input's latent tokens are appended to the noisy tokens with position ids whose first
coordinate is 1 (the paper's Sec. 3: the context image sits at a constant offset along a third
"time" axis of FLUX's 3D RoPE); the velocity is read on the noisy tokens only, and plain Euler
sampling of the rectified flow runs from per-sample noise with the instruction as the prompt
(diffusion/flow.py `FlowBackbone.predict_velocity` with `context`, `flow_sample`). The schedule
is FLUX's (mu from the number of noisy tokens), as in the pipeline.

No inversion: `invert` encodes the input (the VAE posterior's mode, as the pipeline's "argmax")
and draws each sample's noise from its own CPU generator, the draw FluxKontextPipeline makes with
a list of generators, so that every edit point of a sample starts from the same noise. Points
sharing a step count (and whether true CFG is on) run through one batched loop, each row with
its own guidance, true CFG scale, negative prompt and instruction.

Defaults: FLUX.1-Kontext-dev's model card and the pipeline's example, guidance 2.5 (the guidance
embedding of the guidance-distilled model; FluxKontextPipeline's own default is 3.5) and 28 steps;
`true_cfg_scale` 1 (off, the pipeline's default) - above 1 with `negative_prompt` it adds
FluxPipeline's two-pass classifier-free guidance.

Resolution: the output has the input's size. FluxKontextPipeline by default resizes the input to the
preferred training resolution nearest its aspect ratio (`_auto_resize`, PREFERRED_KONTEXT_RESOLUTIONS)
and generates at 1024 x 1024; the benchmark's inputs are squares at the backbone's resolution
(bench/worker.py `fit_square`), which for FLUX.1 checkpoints is 1024 px, the preferred square
resolution, so both resizes are no-ops there (tests/methods/test_flux_kontext.py). On other sizes
(`tiny-flux`'s 64 px) it runs at the input's size, as the pipeline with `_auto_resize=False`.

Weights: `black-forest-labs/FLUX.1-Kontext-dev`, loaded as a FLUX backbone (a Kontext model is a
FluxTransformer2DModel with FLUX.1-dev's config; diffusion/flow.py). The text-to-image FLUX.1
checkpoints are refused: they were not trained to read context tokens. On `tiny-flux` and
`flux-arch` (random weights) it runs for tests and speed measurements.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.flow import FlowBackbone, flow_sample
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.instructions import InstructionParams, instruction
from editsweep.methods.base import Method, Params, State, register_method

KONTEXT_WEIGHTS = "black-forest-labs/FLUX.1-Kontext-dev"
TEXT_TO_IMAGE_WEIGHTS = ("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell")


class FluxKontextParams(InstructionParams):
    """The sampler, the two guidance scales and where the instruction comes from."""

    steps: int = Field(28, ge=1, le=1000, description="Euler steps (FLUX.1-Kontext-dev: 28)")
    guidance: float = Field(
        2.5, ge=0, le=50, description="guidance embedding's scale (model card 2.5; the pipeline's default 3.5)"
    )
    true_cfg_scale: float = Field(
        1.0, ge=1, le=50, description="two-pass classifier-free guidance against negative_prompt; 1: off"
    )
    negative_prompt: str = Field("", description="the negative prompt of true CFG (used when true_cfg_scale > 1)")


@register_method
class FluxKontext(Method):
    """Instruction editing with the input image's latent tokens as in-context conditioning."""

    name = "flux_kontext"
    families = ("flux",)
    EditParams = FluxKontextParams

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        if backbone in TEXT_TO_IMAGE_WEIGHTS:
            return (
                f"{cls.name} cannot run on backbone {backbone!r}: a text-to-image FLUX.1 model does not read "
                f"the input image's tokens; use {KONTEXT_WEIGHTS!r}, a local folder of it, or the offline 'tiny-flux'"
            )
        return None

    def invert(
        self,
        backbone: FlowBackbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        context = backbone.encode_images(images_tensor(samples, backbone.device))
        h, w = context.shape[-2:]
        if h != w or h % 2:
            raise ValueError(
                f"{self.name}: the input latent is {h} x {w}; it must be square (the schedule's shift is the "
                f"square's, as bench/worker.py fits inputs) with even sides (FLUX packs 2x2 patches): use square "
                f"images whose side is a multiple of {2 * backbone.vae_scale_factor} px"
            )
        noise = torch.stack([torch.randn(context.shape[1:], generator=g, device=g.device) for g in generators])
        return {"context": context, "noise": noise.to(backbone.device)}

    def edit(
        self,
        backbone: FlowBackbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[FluxKontextParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        batch = len(samples)
        noise, context = state["noise"].float(), state["context"]
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        groups: dict[tuple[int, bool], list[int]] = {}
        for k, p in enumerate(edit_params):
            groups.setdefault((p.steps, p.true_cfg_scale > 1), []).append(k)
        for (steps, true_cfg), indices in groups.items():
            points = [edit_params[k] for k in indices]
            n = len(points)
            latents = flow_sample(
                backbone,
                noise.repeat(n, 1, 1, 1),
                backbone.sigmas(steps, noise.shape[-1]),
                backbone.encode_text([instruction(s, p) for p in points for s in samples]),
                _rows([p.guidance for p in points], batch),
                backbone.encode_text([p.negative_prompt for p in points for _ in samples]) if true_cfg else None,
                true_cfg=_rows([p.true_cfg_scale for p in points], batch) if true_cfg else None,
                context=context.repeat(n, 1, 1, 1),
            )
            for k, images in zip(indices, backbone.decode(latents).split(batch)):
                results[k] = images
        return results


def _rows(values: list[float], batch: int) -> torch.Tensor:
    """One value per point as one per row of a point-major batch of `batch` samples."""
    return torch.tensor(values).repeat_interleave(batch)
