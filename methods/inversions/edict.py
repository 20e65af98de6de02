"""`edict`: EDICT, exact diffusion inversion via coupled transformations (Wallace, Gokul, Naik
2023; diffusion/edict.py).

Two coupled latent sequences are inverted under the source prompt at `source_guidance`, each step
undone exactly (two noise predictions per step), up to `strength` of the schedule; editing samples
the pair back with the same coupled step, the editor's control active on both of its UNet calls.
Defaults are the paper's and its reference code's (`salesforce/EDICT`, `EDICT_editing`): 50 steps,
p 0.93, strength 0.8, guidance 3 for the inversion and (in the preset `edict`) the edit, leapfrog
steps. The source rows are sampled at `source_guidance` under the source prompt, so they return
the input's latent exactly (to float precision); set the edit's `guidance` to the paper's 3 in
`invert_edit` (its default is 7.5). Every editor's control acts per UNet call (P2P's maps,
MasaCtrl's and PnP's source rows come from the same call), so all of them run with the coupled
step; P2P's LocalBlend averages the maps of both calls of a step, and blends both sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, make_schedule
from editsweep.diffusion.edict import CoupledSampler, EDICTParams, edict_invert, strength_start
from editsweep.diffusion.inputs import images_tensor, source_prompts
from editsweep.diffusion.inverted import Inverted
from editsweep.methods.inversions.base import Inversion, State, register_inversion


@register_inversion
class EDICTInversion(Inversion):
    """EDICT inversion: the coupled pair at `strength` of the schedule, sampled back by the editor."""

    name = "edict"
    families = ("sd", "sdxl")  # only the UNet's cross-attention and noise prediction (diffusion/sdxl.py)
    Params = EDICTParams
    calls_denoiser = True

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: EDICTParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        cond = backbone.encode_text(source_prompts(samples))
        uncond = backbone.encode_text([""] * len(samples))
        schedule = make_schedule(backbone, params.steps)
        start = strength_start(params.steps, params.strength)
        pair = edict_invert(
            backbone, latents, schedule, cond, uncond, params.source_guidance, params.p, params.leapfrog, start
        )
        # Editors' loops start from float32 latents: stored as they read it.
        return {"pair": pair.float()}

    def inverted(self, backbone: Backbone, state: State, samples: Sequence[Sample], params: EDICTParams) -> Inverted:
        full = make_schedule(backbone, params.steps)
        start = strength_start(params.steps, params.strength)
        schedule = Schedule(timesteps=full.timesteps[start:], alphas=full.alphas[start:])
        return Inverted(
            schedule=schedule,
            start=state["pair"],
            uncond=backbone.encode_text([""] * len(samples)),
            source_guidance=params.source_guidance,
            sampler=CoupledSampler(schedule, params.p, params.leapfrog),
        )
