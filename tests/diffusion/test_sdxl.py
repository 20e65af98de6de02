"""The SDXL backbone (diffusion/sdxl.py): tiny presets, packed text, and DDIM sampling checked against
diffusers' own StableDiffusionXLPipeline on the same weights, noise and prompts."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from editsweep.diffusion.attention import AttentionRecorder, controlled_unet
from editsweep.diffusion.backbone import BackboneLoadError, family_of, load_backbone
from editsweep.diffusion.ddim import ddim_invert, ddim_sample, make_schedule, predict_noise
from editsweep.diffusion.sdxl import SDXLBackbone, _build_arch

PROMPTS = ["a red cube", "a cat on a mat"]


@pytest.fixture(scope="module")
def backbone() -> SDXLBackbone:
    return load_backbone("tiny-sdxl")


def _images(n: int) -> torch.Tensor:
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(coarse, size=64, mode="bicubic").clamp(0, 1)


def test_tiny_preset_loads_offline_with_calibrated_latents(backbone):
    assert isinstance(backbone, SDXLBackbone) and backbone.family == "sdxl" and backbone.resolution == 64
    assert backbone.weights_source == "tiny-sdxl:random"
    assert backbone.vae.config.scaling_factor == 0.13025
    latents = backbone.encode_images(_images(2))
    assert latents.shape == (2, 4, 8, 8) and 0.5 < latents.std().item() < 2
    assert backbone.decode(latents).shape == (2, 3, 64, 64)


def test_text_packs_the_pooled_embedding_as_a_last_token(backbone):
    text = backbone.encode_text(PROMPTS + [""])
    embeds, _, pooled, _ = backbone.pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    assert text.shape == (3, 78, 64)  # 77 tokens of 32 + 32 (both encoders) and the pooled token
    torch.testing.assert_close(text[:2, :77], embeds, rtol=0, atol=0)
    torch.testing.assert_close(text[:2, 77, :32], pooled, rtol=0, atol=0)
    assert not text[:2, 77, 32:].any() and not text[2].any()  # padding; force_zeros_for_empty_prompt
    states, added = backbone.unet_text(text, (8, 8))
    assert states.shape == (3, 77, 64) and added["text_embeds"].shape == (3, 32)
    assert added["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 3


def test_ddim_sampling_equals_the_diffusers_pipeline(backbone):
    """diffusion/ddim.py's loop at guidance 7.5 against the empty prompt (zeros: the pipeline's
    negative under force_zeros_for_empty_prompt) = StableDiffusionXLPipeline with DDIM."""
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond, uncond = backbone.encode_text(PROMPTS), backbone.encode_text(["", ""])
    ours = ddim_sample(backbone, noise, make_schedule(backbone, 6), cond, uncond, 7.5)
    pipe = StableDiffusionXLPipeline(
        **{k: v for k, v in backbone.pipe.components.items() if k != "scheduler"},
        scheduler=DDIMScheduler.from_config(backbone.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        PROMPTS, latents=noise.clone(), guidance_scale=7.5, num_inference_steps=6, height=64, width=64,
        output_type="latent",
    ).images
    assert (ours - noise).abs().max() > 1  # the check is not vacuous
    # Measured: 3.8e-6 on latents of magnitude up to ~20.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=5e-5)


def test_attention_processors_see_77_text_tokens(backbone):
    recorder = AttentionRecorder()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with controlled_unet(backbone.unet, recorder):
        predict_noise(backbone, x, torch.tensor(500), backbone.encode_text(["a cat"]), backbone.encode_text([""]), 3.0)
    maps = recorder.take()
    assert maps and {m.shape[-1] for m in maps} == {77}


def test_inversion_then_sampling_at_guidance_1_reconstructs(backbone):
    """Conditioned like `tiny` (conv_out x 0.1): relative latent MSE of the round trip 2.3e-3 at 10
    steps, while the inversion moves the latent by 0.8 of its variance."""
    x0 = backbone.encode_images(_images(2))
    schedule, text = make_schedule(backbone, 10), backbone.encode_text(PROMPTS)
    noise = ddim_invert(backbone, x0, schedule, text)[-1]
    rec = ddim_sample(backbone, noise, schedule, text)
    assert ((noise - x0) ** 2).mean() / x0.var() > 0.5
    assert ((rec - x0) ** 2).mean() / x0.var() < 1e-2


def test_float16_keeps_the_vae_in_float32():
    half = load_backbone("tiny-sdxl", dtype="float16")
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32  # force_upcast
    latents = half.encode_images(_images(1))
    assert latents.dtype == torch.float16 and half.decode(latents).dtype == torch.float32


def test_families_are_known_before_loading(tmp_path):
    assert family_of("tiny-sdxl") == family_of("tiny-sdxl-ip2p") == family_of("sdxl-arch") == "sdxl"
    assert family_of("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert family_of("diffusers/sdxl-instructpix2pix-768") == "sdxl"
    for name in ("StableDiffusionXLPipeline", "StableDiffusionXLInstructPix2PixPipeline"):
        (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": name}))
        assert family_of(str(tmp_path)) == "sdxl"


@pytest.mark.parametrize("hub_id", ["stabilityai/stable-diffusion-xl-base-1.0", "diffusers/sdxl-instructpix2pix-768"])
def test_a_missing_hub_model_fails_fast_offline_with_how_to_download_it(hub_id, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BackboneLoadError, match=rf"{hub_id}.*download {hub_id}"):
        load_backbone(hub_id)


def test_a_saved_diffusers_folder_loads_through_its_pipeline(backbone, tmp_path):
    """The real loading path (safetensors, model_index.json's family and force_zeros), offline."""
    backbone.pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_backbone(str(tmp_path))
    assert isinstance(loaded, SDXLBackbone) and not loaded.random_weights
    assert isinstance(loaded.scheduler, DDIMScheduler) and loaded.force_zeros_for_empty_prompt
    torch.testing.assert_close(loaded.encode_text(PROMPTS + [""]), backbone.encode_text(PROMPTS + [""]))
    torch.testing.assert_close(loaded.encode_images(_images(1)), backbone.encode_images(_images(1)))


def test_full_size_architecture_preset_matches_sdxl_base():
    """Built on the meta device (no memory): SDXL base 1.0's parameter counts, in the dtype asked."""
    unet, vae, text_encoder, text_encoder_2, *_ = _build_arch(0, torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in text_encoder_2.parameters()) == 694_659_840
    assert unet.dtype == text_encoder.dtype == torch.bfloat16 and unet.config.cross_attention_dim == 2048


def test_an_unknown_hub_id_is_loaded_by_the_family_its_model_index_names(monkeypatch, tmp_path):
    """Offline, with only model_index.json in the cache: the SDXL loader runs and says what is missing."""
    snapshot = tmp_path / "models--someone--my-sdxl" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (tmp_path / "models--someone--my-sdxl" / "refs").mkdir()
    (tmp_path / "models--someone--my-sdxl" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert family_of("someone/my-sdxl") is None  # not known at validation
    with pytest.raises(BackboneLoadError, match=r"StableDiffusionXLPipeline: .*someone/my-sdxl"):
        load_backbone("someone/my-sdxl")
