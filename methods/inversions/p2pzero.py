"""`p2pzero`: pix2pix-zero's regularised DDIM inversion (Parmar et al. 2023), diffusion/pix2pix_zero.py.

DDIM inversion at guidance 1 with the source prompt (the paper inverts with a BLIP caption; here
the dataset's source prompt), whose predicted noise is pushed towards white Gaussian noise at
every step by gradient steps on an auto-correlation loss and a KL term before the step uses it.
Defaults are the paper's code's (`src/utils/ddim_inv.py`; diffusers' pipeline has the same):
lambda_ac 20, lambda_kl 20, 5 regularisation rounds of 5 rolls, 50 steps. Editing starts from
the last latent with the null unconditional embedding, as after `ddim`.

Two deliberate differences from the paper's code, the diffusers pipeline agreeing with editsweep
on both: the steps are the exact inverse of the editor's DDIM sampler (`diffusion/ddim.py`; the
paper's inversion loop skips the first and last of the 50 timesteps and reads alpha-bar one
training step early, so its noise is not the start of the edit's schedule), and the shifts of the
auto-correlation loss come from the sample's generator (the paper's code uses Python's unseeded
`random`). The regularisation acts on the epsilon prediction (v-prediction backbones: after
conversion), as the paper's code, which only knows epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from pydantic import Field

from editsweep.core.params import Params
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import ddim_invert, make_schedule
from editsweep.diffusion.inputs import images_tensor, source_prompts
from editsweep.diffusion.inverted import Inverted
from editsweep.diffusion.pix2pix_zero import regularise_noise
from editsweep.methods.inversions.base import Inversion, State, register_inversion


class P2PZeroInversionParams(Params):
    """Everything here changes the inversion."""

    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    lambda_ac: float = Field(20.0, ge=0, le=1000, description="step size on the auto-correlation loss (0: off)")
    lambda_kl: float = Field(20.0, ge=0, le=1000, description="step size on the KL divergence from N(0, 1) (0: off)")
    reg_steps: int = Field(5, ge=0, le=100, description="regularisation rounds per inversion step")
    ac_rolls: int = Field(5, ge=1, le=100, description="random rolls (gradient steps) per round on the auto-correlation")


@register_inversion
class P2PZeroInversion(Inversion):
    """DDIM inversion with pix2pix-zero's noise regularisation; editing starts from its noisiest latent."""

    name = "p2pzero"
    Params = P2PZeroInversionParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: P2PZeroInversionParams,
        generators: Sequence[torch.Generator],
    ) -> State:
        latents = backbone.encode_images(images_tensor(samples, backbone.device))
        cond = backbone.encode_text(source_prompts(samples))
        regularise = partial(
            regularise_noise,
            generators=generators,
            lambda_ac=params.lambda_ac,
            lambda_kl=params.lambda_kl,
            reg_steps=params.reg_steps,
            ac_rolls=params.ac_rolls,
        )
        trajectory = ddim_invert(backbone, latents, make_schedule(backbone, params.steps), cond, regularise=regularise)
        return {"noise_latents": trajectory[-1]}

    def inverted(
        self, backbone: Backbone, state: State, samples: Sequence[Sample], params: P2PZeroInversionParams
    ) -> Inverted:
        return Inverted(
            schedule=make_schedule(backbone, params.steps),
            start=state["noise_latents"],
            uncond=backbone.encode_text([""] * len(samples)),
        )
