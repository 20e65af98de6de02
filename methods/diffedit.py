"""`diffedit`: DiffEdit (Couairon, Verbeek, Schwenk, Cord 2023, "DiffEdit: Diffusion-based semantic
image editing with mask guidance"), following diffusers' `StableDiffusionDiffEditPipeline`
(`diffusers/pipelines/deprecated/stable_diffusion_diffedit/`; the paper has no official code).

1. Mask (`diffusion/diffedit_mask.py`): where the guided noise predictions of the target (query)
   and source (reference) prompts differ, over n noisings of the input at a strength.
2. Encoding: DDIM inversion of the input's latent with the unconditional model (the empty
   prompt, as the paper's step 2) over the first `encoding_ratio` of the `steps`-step schedule.
3. Decoding with mask guidance: DDIM from the encoded latent with the target prompt and
   classifier-free guidance; after every step the latent outside the mask is replaced by the
   encoding's latent at the level the step reached (y_t = M y_t + (1 - M) x_t), the last step by
   the input's own latent.

A method of its own rather than an editor under `invert_edit`: its encoding is partial (the
encoding ratio is one of the paper's main knobs, where every registered inversion inverts the whole
schedule and editors start from its end), unconditional (the inversions encode with the source
prompt), and its decoding needs the encoding's latent at every level, which only Direct inversion
hands editors; the source rows of the other inversions are only a re-run of the input at the edit's
guidance, and would cost a second row per sample for what the stored trajectory gives for free.

One deliberate difference from diffusers, pinned in tests/methods/test_diffedit.py: after step i
diffusers blends with the inversion's latent at the level step i started from (its
`image_latents[i]`, one step noisier than the latent it replaces, and never the input's own latent),
where this follows the paper's equation and blends at the level reached. And where diffusers'
`invert` encodes with the prompt it is given at guidance 7.5 by default, this encodes
unconditionally, as the paper (the test gives diffusers the empty prompt at guidance 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.blending import blend_outside
from editsweep.diffusion.ddim import ddim_invert, ddim_sample, encoding_start, make_schedule
from editsweep.diffusion.diffedit_mask import DiffEditMaskParams, point_masks
from editsweep.diffusion.inputs import images_tensor, target_prompts
from editsweep.methods.base import Method, State, register_method


class DiffEditInvertParams(Params):
    """The encoding: the schedule and how much of it is inverted."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the full schedule (encoding, decoding, mask)")
    encoding_ratio: float = Field(0.8, gt=0, le=1, description="r: fraction of the schedule encoded and decoded")


class DiffEditEditParams(DiffEditMaskParams):
    """The mask and the decoding."""

    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale of the decoding with the target prompt")


@register_method
class DiffEdit(Method):
    """Mask from noise-prediction differences, unconditional DDIM encoding, mask-guided decoding."""

    name = "diffedit"
    families = ("sd", "sdxl")  # the UNet only through diffusion/ddim.py's unet_epsilon (SDXL: diffusion/sdxl.py)
    InvertParams = DiffEditInvertParams
    EditParams = DiffEditEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: DiffEditInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        empty = backbone.encode_text([""] * len(samples))
        start = encoding_start(params.steps, params.encoding_ratio)
        trajectory = ddim_invert(backbone, latents, make_schedule(backbone, params.steps), empty, start=start)
        return {"trajectory": trajectory.transpose(0, 1)}  # batch-first: (B, levels, C, h, w)

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: DiffEditInvertParams,
        edit_params: Sequence[DiffEditEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        trajectory = state["trajectory"].float().transpose(0, 1)  # [0] the input's latent, [-1] the start
        n_points, batch, steps = len(edit_params), len(samples), invert_params.steps
        schedule = make_schedule(backbone, steps)
        masks = point_masks(backbone, trajectory[0], samples, schedule, edit_params, generators)
        cond = backbone.encode_text(target_prompts(samples)).repeat(n_points, 1, 1)
        uncond = backbone.encode_text([""] * batch).repeat(n_points, 1, 1)
        guidance = torch.tensor([p.guidance for p in edit_params], device=backbone.device).repeat_interleave(batch)

        def encoded(i: int) -> torch.Tensor:  # the encoding's latent at the level step i reaches
            return trajectory[steps - i - 1].repeat(n_points, 1, 1, 1)

        latents = ddim_sample(
            backbone,
            trajectory[-1].repeat(n_points, 1, 1, 1),
            schedule,
            cond,
            uncond,
            guidance,
            start=encoding_start(steps, invert_params.encoding_ratio),
            after_step=blend_outside(torch.cat(masks), encoded),
        )
        return list(backbone.decode(latents).split(batch))
