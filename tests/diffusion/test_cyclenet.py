"""CycleNet's sampling (diffusion/cyclenet.py): LDM img2img's step indices (the quirk included), the
ControlNet reading the source prompt on both branches, and scale 0 / eta 0 as plain guided DDIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.controlnet import load_controlnet
from editsweep.diffusion.cyclenet import cyclenet_sample, cyclenet_start, draw_step_noise, predict_noise_cyclenet
from editsweep.diffusion.ddim import ddim_sample, make_schedule


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def controlnet(backbone):
    return load_controlnet("tiny", backbone)


@pytest.mark.parametrize(("steps", "strength"), [(100, 0.5), (10, 0.75), (10, 1.0), (4, 0.1)])
def test_start_follows_ldm_img2img_indices(backbone, steps, strength):
    """LDM: `t_enc = min(int(strength * steps), steps - 1)`, noise at `ddim_timesteps[t_enc]`, then
    `decode` from index `t_enc - 1` down; LDM's `ddim_timesteps` (uniform, +1) equal ours reversed."""
    noised_at, count = cyclenet_start(steps, strength)
    t_enc = min(int(strength * steps), steps - 1)
    ldm_timesteps = np.arange(0, 1000, 1000 // steps) + 1
    schedule = make_schedule(backbone, steps)
    assert schedule.timesteps[noised_at].item() == ldm_timesteps[t_enc]
    assert count == t_enc
    denoised = schedule.timesteps[noised_at + 1 :].tolist()
    assert denoised == list(np.flip(ldm_timesteps[:t_enc]))  # one step below the noise level: the quirk


def test_the_controlnet_reads_the_source_prompt_on_both_branches(backbone, controlnet):
    g = torch.Generator().manual_seed(0)
    x, image = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    target, source = backbone.encode_text(["a dog", "winter"]), backbone.encode_text(["a cat", "summer"])
    t = make_schedule(backbone, 10).timesteps[2]
    ours = predict_noise_cyclenet(backbone, controlnet, x, t, image, target, source, torch.tensor([9.0, 2.0]),
                                  torch.tensor([1.0, 0.5]))
    down, mid = controlnet(x, t, encoder_hidden_states=source, controlnet_cond=image, return_dict=False)
    s = torch.tensor([1.0, 0.5]).view(-1, 1, 1, 1)

    def unet(text):
        return backbone.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=[d * s for d in down],
                             mid_block_additional_residual=mid * s).sample

    eps_s, eps_t = unet(source), unet(target)
    reference = eps_s + torch.tensor([9.0, 2.0]).view(-1, 1, 1, 1) * (eps_t - eps_s)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_scale_0_and_eta_0_is_guided_ddim_from_the_noised_latent(backbone, controlnet):
    """The source prompt as the negative one; measured difference 0.0."""
    g = torch.Generator().manual_seed(1)
    latents, image = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    target, source = backbone.encode_text(["a dog", "winter"]), backbone.encode_text(["a cat", "summer"])
    schedule = make_schedule(backbone, 10)
    noised_at, count = cyclenet_start(10, 0.6)
    noise = draw_step_noise([torch.Generator().manual_seed(i) for i in range(2)], (4, 8, 8), 1 + count, "cpu")
    two = torch.ones(2)
    ours = cyclenet_sample(backbone, controlnet, latents, schedule, noised_at, noise, image, target, source,
                           7.5 * two, 0 * two, 0 * two)
    a = schedule.alphas[noised_at].item()
    start = a**0.5 * latents + (1 - a) ** 0.5 * noise[0]
    plain = ddim_sample(backbone, start, schedule, target, source, 7.5, start=noised_at + 1)
    assert (ours - plain).abs().max().item() < 1e-6
    stochastic = cyclenet_sample(backbone, controlnet, latents, schedule, noised_at, noise, image, target, source,
                                 7.5 * two, 0 * two, two)
    assert (stochastic - plain).abs().mean().item() > 1e-2
