"""`copy`: returns the input image unchanged, the fidelity ceiling of every benchmark (FlexIT's COPY)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import Method, Params, State, register_method


@register_method
class Copy(Method):
    """Output = input: LPIPS 0, PSNR infinite, and the CLIP-T of doing nothing."""

    name = "copy"
    families = ("sd", "sd3", "flux", "sdxl", "qwen-image")  # uses only what every backbone has

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        return {"images": images_tensor(samples, backbone.device)}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[Params],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        return [state["images"].float().clone() for _ in edit_params]
