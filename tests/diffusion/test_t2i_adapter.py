"""T2I-Adapter's guided sampling (diffusion/t2i_adapter.py) against diffusers'
`StableDiffusionAdapterPipeline` on the same tiny weights, condition image, prompts and noise, and the
loading of the extra model (the `tiny` preset on any backbone, 1-channel adapters, clear errors)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionAdapterPipeline, T2IAdapter

from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.t2i_adapter import AdapterLoadError, adapter_input, adapter_sample, load_adapter

PROMPTS = ["a red car on a road", "a cat"]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def adapter(backbone):
    return load_adapter("tiny", backbone)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, 64, 64, generator=g) > 0.8).float(), torch.randn(2, 4, 8, 8, generator=g)


def pipeline(backbone, adapter) -> StableDiffusionAdapterPipeline:
    pipe = StableDiffusionAdapterPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        adapter=adapter,
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_sampling_matches_the_diffusers_pipeline(backbone, adapter, inputs, scale):
    condition, noise = inputs
    reference = pipeline(backbone, adapter)(
        prompt=PROMPTS, image=condition, num_inference_steps=6, guidance_scale=7.5,
        adapter_conditioning_scale=scale, latents=noise.clone(), output_type="latent",
    ).images
    two = torch.ones(2, dtype=torch.float64)
    ours = adapter_sample(
        backbone, adapter, noise, make_schedule(backbone, 6), condition, backbone.encode_text(PROMPTS),
        backbone.encode_text(["", ""]), 7.5 * two, scale * two, two,
    )
    # Measured: 2.9e-6 and 3.8e-6 on latents of magnitude up to ~20 (random UNet, guidance 7.5).
    assert (ours - reference).abs().max().item() < 1e-4


def test_a_one_channel_adapter_reads_the_map_as_the_pipeline_does(backbone, inputs, tmp_path):
    """A Canny-like adapter (1 input channel) saved as safetensors and loaded from its folder: our
    condition (the map on 3 channels) gives what the pipeline gives for the 1-channel map."""
    condition, noise = inputs[0][:, :1].repeat(1, 3, 1, 1), inputs[1]
    torch.manual_seed(1)
    T2IAdapter(in_channels=1, channels=[32, 64], num_res_blocks=2, downscale_factor=8).save_pretrained(
        tmp_path / "canny", safe_serialization=True
    )
    one = load_adapter(str(tmp_path / "canny"), backbone)
    assert one.config.in_channels == 1
    image = adapter_input(one, condition, "canny")
    assert image.shape == (2, 1, 64, 64)
    reference = pipeline(backbone, one)(
        prompt=PROMPTS, image=condition[:, :1], num_inference_steps=4, latents=noise.clone(), output_type="latent"
    ).images
    two = torch.ones(2, dtype=torch.float64)
    ours = adapter_sample(
        backbone, one, noise, make_schedule(backbone, 4), image, backbone.encode_text(PROMPTS),
        backbone.encode_text(["", ""]), 7.5 * two, two, two,
    )
    assert (ours - reference).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="reads 1-channel condition images, the condition gives 3 different"):
        adapter_input(one, torch.rand(1, 3, 8, 8), "canny")


def test_tiny_is_sized_to_any_backbone_and_cached(backbone, adapter):
    assert load_adapter("tiny", backbone) is adapter
    assert tuple(adapter.config.channels) == tuple(backbone.unet.config.block_out_channels)
    toy = load_backbone("toy")
    features = load_adapter("tiny", toy)(torch.zeros(1, 3, toy.resolution, toy.resolution))
    side = toy.resolution // toy.vae_scale_factor
    assert [f.shape[-1] for f in features] == [side // 2**k for k in range(len(features))]


def test_an_adapter_for_another_base_is_a_clear_error(backbone, tmp_path):
    T2IAdapter(channels=[32, 64, 128], downscale_factor=8).save_pretrained(tmp_path / "a", safe_serialization=True)
    with pytest.raises(ValueError, match=r"T2I-Adapter '.*a' \(feature channels \(32, 64, 128\).*does not fit"):
        load_adapter(str(tmp_path / "a"), backbone)


def test_missing_weights_offline_name_the_model_and_how_to_fetch_it(backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(AdapterLoadError, match="huggingface-cli download TencentARC/t2iadapter_canny_sd15v2"):
        load_adapter("TencentARC/t2iadapter_canny_sd15v2", backbone)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterLoadError, match="needs config.json and diffusion_pytorch_model.safetensors"):
        load_adapter(str(tmp_path / "empty"), backbone)


@pytest.mark.parametrize(("steps", "factor"), [(10, 0.7), (10, 0.3), (7, 0.5), (50, 0.29)])
def test_the_factor_keeps_the_adapter_on_the_sdxl_pipelines_steps(backbone, adapter, inputs, monkeypatch, steps,
                                                                   factor):
    """`StableDiffusionXLAdapterPipeline`: the adapter on steps `i < int(steps * factor)` (Python floats:
    0.7 * 10 = 7.000000000000001 gives 7 steps; float32 0.7 would give 6)."""
    import editsweep.diffusion.t2i_adapter as module

    seen: list[bool] = []
    original = module.predict_noise_adapter

    def spy(backbone, latents, t, features, cond, uncond, guidance, scale, alpha=None):
        seen.append(features is not None and bool(scale.any()))
        return original(backbone, latents, t, features, cond, uncond, guidance, scale, alpha)

    monkeypatch.setattr(module, "predict_noise_adapter", spy)
    condition, noise = inputs
    one = torch.ones(1, dtype=torch.float64)
    adapter_sample(
        backbone, adapter, noise[:1], make_schedule(backbone, steps), condition[:1], backbone.encode_text(PROMPTS[:1]),
        backbone.encode_text([""]), one, one, factor * one,
    )
    assert seen == [i < int(steps * factor) for i in range(steps)]
