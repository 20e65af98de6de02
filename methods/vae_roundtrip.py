"""`vae_roundtrip`: decode(encode(input)), the upper bound of every latent-space reconstruction.

No diffusion step runs: the output is what the backbone's autoencoder keeps of the input, which
no inversion method can beat on PSNR/SSIM/LPIPS. Prompt Tuning Inversion's reconstruction table
lists it as "AE (upper bound)". The latent is the posterior mean, as every method here encodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.methods.base import EncodesInput, Params, State, register_method


@register_method
class VaeRoundtrip(EncodesInput):
    """Output = the backbone VAE's reconstruction of the input (encode, then decode)."""

    name = "vae_roundtrip"
    families = ("sd", "sd3", "flux", "sdxl", "qwen-image")  # uses only what every backbone has

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[Params],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        images = backbone.decode(state["latents"])
        return [images.clone() for _ in edit_params]
