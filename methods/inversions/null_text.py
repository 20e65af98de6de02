"""`null_text` inversion (Mokady et al. 2023): DDIM inversion at guidance 1 gives the pivot
trajectory, then per-step null-text embeddings are optimised so that guided DDIM retraces it
(diffusion/null_text.py). Editors use them as the unconditional input of every row, at the
guidance scale they were optimised for; follows the reference notebook of the paper's code
(`null_text_w_ptp.ipynb`: Adam at lr 1e-2 * (1 - i / 100), 10 inner steps, early stop at
1e-5 + 2e-5 i).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import invert_source, make_schedule
from editsweep.diffusion.inputs import source_prompts
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.null_text import NullTextParams, optimize_null_text
from editsweep.methods.inversions.base import Inversion, State, register_inversion


@register_inversion
class NullTextInversion(Inversion):
    """Null-text inversion: the pivot's noisy latent and the tuned per-step null embeddings."""

    name = "null_text"
    families = ("sd", "sdxl")  # only the UNet's cross-attention and noise prediction (diffusion/sdxl.py)
    Params = NullTextParams
    fixes_guidance = True

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: NullTextParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        trajectory = invert_source(backbone, samples, params.steps)
        cond = backbone.encode_text(source_prompts(samples))
        schedule = make_schedule(backbone, params.steps)
        with torch.enable_grad():
            null_embeddings = optimize_null_text(backbone, trajectory, cond, schedule, params)
        return {"noise_latents": trajectory[-1], "null_embeddings": null_embeddings}

    def inverted(self, backbone: Backbone, state: State, samples: Sequence[Sample], params: NullTextParams) -> Inverted:
        return Inverted(
            schedule=make_schedule(backbone, params.steps),
            start=state["noise_latents"],
            uncond=state["null_embeddings"],
            guidance=params.guidance,
        )
