"""ControlNet's guided sampling (diffusion/controlnet.py) against diffusers'
`StableDiffusionControlNetPipeline` on the same tiny weights, condition image, prompts and noise, and
the loading of the extra model (the `tiny` preset on any backbone, clear errors otherwise)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.controlnet import (
    ControlNetLoadError,
    controlnet_sample,
    load_controlnet,
    predict_noise_controlnet,
)
from editsweep.diffusion.ddim import make_schedule

PROMPTS = ["a red car on a road", "a cat"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def controlnet(backbone):
    return load_controlnet("tiny", backbone)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, 64, 64, generator=g) > 0.8).float(), torch.randn(2, 4, 8, 8, generator=g)


@pytest.mark.parametrize(("guess_mode", "start", "end"), [(False, 0.0, 1.0), (False, 0.2, 0.7), (True, 0.0, 1.0)])
def test_sampling_matches_the_diffusers_pipeline(backbone, controlnet, inputs, guess_mode, start, end):
    condition, noise = inputs
    pipe = StableDiffusionControlNetPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        controlnet=controlnet,
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(
        prompt=PROMPTS,
        image=condition,
        num_inference_steps=6,
        guidance_scale=7.5,
        controlnet_conditioning_scale=0.8,
        guess_mode=guess_mode,
        control_guidance_start=start,
        control_guidance_end=end,
        latents=noise.clone(),
        output_type="latent",
    ).images
    two = torch.ones(2)
    ours = controlnet_sample(
        backbone, controlnet, noise, make_schedule(backbone, 6), condition, backbone.encode_text(PROMPTS),
        backbone.encode_text(["", ""]), 7.5 * two, 0.8 * two, start * two, end * two, guess_mode,
    )
    # Measured: 2.9e-6 to 4.8e-6 on latents of magnitude up to ~20 (random UNet, guidance 7.5).
    assert (ours - reference).abs().max().item() < 1e-4


def test_each_row_keeps_its_own_scales(backbone, controlnet, inputs):
    condition, noise = inputs
    cond, uncond = backbone.encode_text(PROMPTS), backbone.encode_text(["", ""])
    t = make_schedule(backbone, 10).timesteps[3]
    rows = [(7.5, 1.0), (2.0, 0.3)]
    for guess_mode in (False, True):
        together = predict_noise_controlnet(
            backbone, controlnet, noise, t, condition, cond, uncond, torch.tensor([7.5, 2.0]),
            torch.tensor([1.0, 0.3]), guess_mode,
        )
        for b, (g, s) in enumerate(rows):
            alone = predict_noise_controlnet(
                backbone, controlnet, noise[b : b + 1], t, condition[b : b + 1], cond[b : b + 1],
                uncond[b : b + 1], torch.tensor([g]), torch.tensor([s]), guess_mode,
            )
            torch.testing.assert_close(together[b : b + 1], alone, rtol=0, atol=1e-5)


def test_tiny_is_built_from_any_backbones_unet_and_cached(backbone, controlnet):
    assert load_controlnet("tiny", backbone) is controlnet
    assert controlnet.config.cross_attention_dim == backbone.unet.config.cross_attention_dim
    assert controlnet.controlnet_mid_block.weight.abs().sum() > 0  # zero convolutions made random
    toy = load_backbone("toy")
    toy_controlnet = load_controlnet("tiny", toy)
    assert len(toy_controlnet.config.conditioning_embedding_out_channels) == 3  # toy's VAE: 1/4
    down, mid = toy_controlnet(
        torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=toy.encode_text(["a"]),
        controlnet_cond=torch.zeros(1, 3, 32, 32), return_dict=False,
    )
    assert mid.shape[1] == toy.unet.config.block_out_channels[-1]


def test_a_controlnet_for_another_base_is_a_clear_error(backbone, tmp_path):
    toy_controlnet = load_controlnet("tiny", load_backbone("toy"))
    toy_controlnet.save_pretrained(tmp_path / "cn", safe_serialization=True)
    with pytest.raises(ValueError, match=r"ControlNet '.*cn' \(cross-attention 64.*does not fit backbone 'tiny'"):
        load_controlnet(str(tmp_path / "cn"), backbone)


def test_missing_weights_offline_name_the_model_and_how_to_fetch_it(backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ControlNetLoadError, match="huggingface-cli download lllyasviel/sd-controlnet-canny"):
        load_controlnet("lllyasviel/sd-controlnet-canny", backbone)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ControlNetLoadError, match="needs config.json and diffusion_pytorch_model.safetensors"):
        load_controlnet(str(tmp_path / "empty"), backbone)
