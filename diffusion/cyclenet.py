"""CycleNet's sampling (Xu et al. 2023, "CycleNet: Rethinking Cycle Consistency in Text-Guided
Diffusion for Image Manipulation"), after its released inference code (`sled-group/CycleNet`:
`gradio_cycleNet.py`, `cycleNet/cycleNet.py` `CycleLDM.apply_model`, `cycleNet/ddim_hacked.py`).

CycleNet is a ControlNet (`cldm.ControlNet`, hint = the input image itself in [0, 1]) trained with
cycle-consistency losses on SD 2.1-base, whose UNet decoder is fine-tuned too (`sd_locked = False`).
At inference (`apply_model`) the ControlNet always reads the *source* prompt while the UNet reads the
branch's prompt: the target prompt on the conditional branch, the source prompt (not "") on the
unconditional one; its residuals, times the control strength on all 13 outputs, go to both branches.
The ControlNet's inputs are the same on both branches, so it runs once per step here.

Sampling is LDM's img2img (`stochastic_encode` then `decode`) with DDIM's eta: the input's latent
noised to DDIM step index `t_enc = min(int(strength * steps), steps - 1)`, then `t_enc` DDIM steps
from index `t_enc - 1` down. That is, the latent is noised to one DDIM step above the first step that
denoises it, a quirk of LDM's img2img kept here (tests/diffusion/test_cyclenet.py pins it). Each
step's noise (sigma_t = eta sqrt(posterior variance)) is drawn per sample from its own generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ControlNetModel

from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.cycle_diffusion import cycle_step
from editsweep.diffusion.ddim import Schedule, to_epsilon


def cyclenet_start(steps: int, strength: float) -> tuple[int, int]:
    """(the DDIM step index the input is noised to, the number of denoising steps) in this repo's
    descending step order: LDM's `t_enc` gives noise at sampling step `steps - 1 - t_enc` and then
    steps `steps - t_enc` to `steps - 1` (module docstring)."""
    t_enc = min(int(strength * steps), steps - 1)
    return steps - 1 - t_enc, t_enc


def predict_noise_cyclenet(
    backbone: Backbone,
    controlnet: ControlNetModel,
    latents: torch.Tensor,
    t: torch.Tensor,
    image: torch.Tensor,
    target: torch.Tensor,
    source: torch.Tensor,
    guidance: torch.Tensor,
    scale: torch.Tensor,
    alpha: float | None = None,
) -> torch.Tensor:
    """eps_s + g (eps_t - eps_s): the UNet under the target (t) and source (s) prompts, both with the
    ControlNet's residuals of (x, source prompt, input image) scaled per row by `scale`."""
    dtype = backbone.unet.dtype
    x = latents.to(dtype)
    down, mid = controlnet(
        x, t, encoder_hidden_states=source.to(dtype), controlnet_cond=image.to(latents.device, dtype),
        conditioning_scale=1.0, return_dict=False,
    )
    s = scale.to(latents.device, dtype).view(-1, 1, 1, 1)
    out = backbone.unet(
        torch.cat([x, x]),
        t,
        encoder_hidden_states=torch.cat([source, target]).to(dtype),
        down_block_additional_residuals=[torch.cat([d * s, d * s]) for d in down],
        mid_block_additional_residual=torch.cat([mid * s, mid * s]),
    ).sample.float()
    eps_s, eps_t = to_epsilon(backbone, out, torch.cat([x, x]), alpha).chunk(2)
    return eps_s + guidance.to(latents.device, torch.float32).view(-1, 1, 1, 1) * (eps_t - eps_s)


def draw_step_noise(
    generators: Sequence[torch.Generator], shape: Sequence[int], count: int, device: torch.device
) -> torch.Tensor:
    """(count, B, *shape) standard normal draws, each sample's from its own generator in order."""
    draws = [torch.stack([torch.randn(tuple(shape), generator=g, device=g.device) for _ in range(count)])
             for g in generators]
    return torch.stack(draws, dim=1).to(device)


@torch.no_grad()
def cyclenet_sample(
    backbone: Backbone,
    controlnet: ControlNetModel,
    latents: torch.Tensor,
    schedule: Schedule,
    noised_at: int,
    noise: torch.Tensor,
    image: torch.Tensor,
    target: torch.Tensor,
    source: torch.Tensor,
    guidance: torch.Tensor,
    scale: torch.Tensor,
    eta: torch.Tensor,
) -> torch.Tensor:
    """Noise the clean `latents` to `schedule.alphas[noised_at]` with `noise[0]`, then denoise with DDIM
    (per-row `eta`, step i's noise `noise[1 + k]`) over sampling steps `noised_at + 1` to the end."""
    a = schedule.alphas[noised_at].item()
    x = a**0.5 * latents.float() + (1 - a) ** 0.5 * noise[0]
    row_eta = eta.to(x.device, torch.float64).view(-1, 1, 1, 1)
    for k, i in enumerate(range(noised_at + 1, schedule.steps)):
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = predict_noise_cyclenet(
            backbone, controlnet, x, schedule.timesteps[i], image, target, source, guidance, scale, a_from
        )
        x = torch.stack([
            cycle_step(x[b : b + 1], eps[b : b + 1], noise[1 + k, b : b + 1], a_from, a_to, float(row_eta[b]))
            for b in range(x.shape[0])
        ]).squeeze(1)
    return x
