"""The flow-matching backbones (diffusion/flow.py): tiny presets, and sampling checked against
diffusers' own StableDiffusion3Pipeline / FluxPipeline on the same weights, noise and prompt."""

from __future__ import annotations

import json

import pytest
import torch

from editsweep.diffusion.backbone import BackboneLoadError, family_of, load_backbone
from editsweep.diffusion.flow import FlowBackbone, flow_sample


@pytest.fixture(scope="module", params=["sd3", "flux"])
def backbone(request) -> FlowBackbone:
    return load_backbone(f"tiny-{request.param}")


def test_tiny_presets_load_offline_with_calibrated_latents(backbone):
    assert backbone.family in ("sd3", "flux") and backbone.resolution == 64
    assert backbone.weights_source == f"tiny-{backbone.family}:random"
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = backbone.encode_images(images)
    assert latents.shape == (2, 16, 8, 8)
    assert 0.5 < latents.std().item() < 2
    assert backbone.decode(latents).shape == (2, 3, 64, 64)


def test_sampling_equals_the_diffusers_pipeline(backbone):
    """Same noise, prompt, steps and guidance: the pipeline's latents, to float tolerance."""
    steps, guidance, prompts = 4, 3.0, ["a red cube", "a cat on a mat"]
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    text = backbone.encode_text(prompts)
    g = torch.full((2,), guidance)
    if backbone.family == "sd3":
        ours = flow_sample(backbone, noise, backbone.sigmas(steps), text, g, backbone.encode_text(["", ""]))
        theirs = backbone.pipe(
            prompts,
            negative_prompt=["", ""],
            latents=noise,
            guidance_scale=guidance,
            num_inference_steps=steps,
            height=64,
            width=64,
            max_sequence_length=backbone.max_sequence_length,
            output_type="latent",
        ).images
    else:
        ours = flow_sample(backbone, noise, backbone.sigmas(steps), text, g)
        packed = backbone.pipe._pack_latents(noise, 2, 16, 8, 8)
        out = backbone.pipe(
            prompts,
            latents=packed,
            guidance_scale=guidance,
            num_inference_steps=steps,
            height=64,
            width=64,
            max_sequence_length=backbone.max_sequence_length,
            output_type="latent",
        ).images
        theirs = backbone.pipe._unpack_latents(out, 64, 64, backbone.vae_scale_factor)
    assert (ours - noise).abs().max() > 1e-2  # the check is not vacuous
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_families_are_known_before_loading(tmp_path):
    assert family_of("tiny") == family_of("toy") == family_of("runwayml/stable-diffusion-v1-5") == "sd"
    assert family_of("tiny-sd3") == family_of("stabilityai/stable-diffusion-3-medium-diffusers") == "sd3"
    assert family_of("tiny-flux") == family_of("black-forest-labs/FLUX.1-schnell") == "flux"
    assert family_of("someone/unknown-model") is None
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert family_of(str(tmp_path)) == "flux"


@pytest.mark.parametrize("hub_id", ["stabilityai/stable-diffusion-3-medium-diffusers", "black-forest-labs/FLUX.1-dev"])
def test_a_missing_hub_model_fails_fast_offline_with_how_to_download_it(hub_id, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BackboneLoadError, match=rf"{hub_id}.*download {hub_id}"):
        load_backbone(hub_id)


@pytest.mark.parametrize("steps, tolerance", [(10, 4e-3), (28, 5e-4)])
def test_inversion_then_sampling_at_guidance_1_reconstructs(backbone, steps, tolerance):
    """The tiny transformers are smooth enough as seeded: relative latent MSE ~1.8e-3 at 10 steps,
    ~2e-4 at 28, while the inversion moves the latent by ~0.35 of its variance."""
    from editsweep.diffusion.flow import flow_invert

    images = torch.nn.functional.interpolate(
        torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)), size=64, mode="bicubic"
    ).clamp(0, 1)
    x0 = backbone.encode_images(images)
    text, g, sigmas = backbone.encode_text(["a cat", "a dog", "a house"]), torch.ones(3), backbone.sigmas(steps)
    noise = flow_invert(backbone, x0, sigmas, text, g)
    rec = flow_sample(backbone, noise, sigmas, text, g)
    assert ((noise - x0) ** 2).mean() / x0.var() > 0.2
    assert ((rec - x0) ** 2).mean() / x0.var() < tolerance


def test_a_saved_diffusers_folder_loads_through_the_pipeline_class(backbone, tmp_path):
    """The real loading path (safetensors, model_index.json's family), offline, on the tiny weights."""
    backbone.pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_backbone(str(tmp_path))
    assert loaded.family == backbone.family and not loaded.random_weights
    assert loaded.weights_source == str(tmp_path)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.encode_images(images), backbone.encode_images(images))
    loaded.max_sequence_length = backbone.max_sequence_length  # a loaded model uses its pipeline's default
    torch.testing.assert_close(loaded.encode_text(["a cat"]).embeds, backbone.encode_text(["a cat"]).embeds)


def test_an_unknown_hub_id_is_loaded_by_the_family_its_model_index_names(monkeypatch, tmp_path):
    """Offline, with only model_index.json in the cache: the FLUX loader runs and says what is missing."""
    snapshot = tmp_path / "models--someone--my-flux" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (tmp_path / "models--someone--my-flux" / "refs").mkdir()
    (tmp_path / "models--someone--my-flux" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert family_of("someone/my-flux") is None  # not known at validation
    with pytest.raises(BackboneLoadError, match=r"FluxPipeline: .*someone/my-flux"):
        load_backbone("someone/my-flux")


@pytest.mark.parametrize("family, transformer_params", [("sd3", 2.028e9), ("flux", 11.90e9)])
def test_full_size_architecture_presets_match_the_released_models(family, transformer_params):
    """Built on the meta device (no memory): the released models' parameter counts, in the dtype asked."""
    from editsweep.diffusion.flow import _build_arch

    pipe = _build_arch(family, 0, torch.device("meta"), torch.bfloat16)
    count = sum(p.numel() for p in pipe.transformer.parameters())
    assert abs(count - transformer_params) / transformer_params < 1e-3
    encoder = pipe.text_encoder_3 if family == "sd3" else pipe.text_encoder_2
    assert encoder.dtype == torch.bfloat16 and encoder.config.d_model == 4096
    assert family_of(f"{family}-arch") == family


@pytest.fixture(scope="module")
def flux() -> FlowBackbone:
    return load_backbone("tiny-flux")


def test_flux_true_cfg_equals_the_pipelines_true_cfg_scale(flux):
    """FluxPipeline(true_cfg_scale=s, negative_prompt=...): two passes on top of the guidance
    embedding, the same latents to float tolerance; without a negative prompt nothing changes."""
    steps, prompts, negatives = 3, ["a red cube", "a cat on a mat"], ["blurry", ""]
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    text, negative = flux.encode_text(prompts), flux.encode_text(negatives)
    g, s = torch.full((2,), 2.5), torch.full((2,), 4.0)
    ours = flow_sample(flux, noise, flux.sigmas(steps), text, g, negative, true_cfg=s)
    out = flux.pipe(
        prompts,
        negative_prompt=negatives,
        true_cfg_scale=4.0,
        latents=flux.pipe._pack_latents(noise, 2, 16, 8, 8),
        guidance_scale=2.5,
        num_inference_steps=steps,
        height=64,
        width=64,
        max_sequence_length=flux.max_sequence_length,
        output_type="latent",
    ).images
    theirs = flux.pipe._unpack_latents(out, 64, 64, flux.vae_scale_factor)
    plain = flow_sample(flux, noise, flux.sigmas(steps), text, g)
    assert (ours - plain).abs().max() > 1e-2  # true CFG changes the result
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    at_1 = flow_sample(flux, noise, flux.sigmas(steps), text, g, negative, true_cfg=torch.ones(2))
    torch.testing.assert_close(at_1, plain, rtol=0, atol=1e-5)


def test_flux_negative_and_true_cfg_come_together(flux):
    x, text = torch.zeros(1, 16, 8, 8), flux.encode_text(["a cat"])
    with pytest.raises(ValueError, match="negative prompt needs true_cfg"):
        flux.predict_velocity(x, 0.5, text, torch.ones(1), text)
    with pytest.raises(ValueError, match="true_cfg needs the negative"):
        flux.predict_velocity(x, 0.5, text, torch.ones(1), true_cfg=torch.ones(1))
