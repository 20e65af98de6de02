import open_clip
import pytest
import torch

from editsweep.diffusion.backbone import BackboneLoadError, clip_bpe_tokenizer, load_backbone

PROMPTS = [
    "a photo of a cat",
    "A Dog's toy, running!! 123",
    "photo of a bird spreading wings.",
    "a sitting dog, oil painting by Van Gogh",
    "",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tiny_tokenizer_matches_open_clip(prompt):
    ours = clip_bpe_tokenizer()(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    theirs = open_clip.tokenize([prompt])[0].tolist()
    end = theirs.index(49407) + 1
    assert len(ours) == 77
    assert ours[:end] == theirs[:end]
    # Stable Diffusion's tokenizer pads with <|endoftext|>, open_clip with 0.
    assert set(ours[end:]) <= {49407}


def test_tiny_shapes_and_latent_statistics(tiny_backbone):
    assert tiny_backbone.resolution == 64
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = tiny_backbone.encode_images(images)
    assert latents.shape == (3, 4, 8, 8)
    # Calibrated like SD: unit-scale latents rather than the random VAE's ~0.05.
    assert 0.3 < latents.std().item() < 3.0
    assert tiny_backbone.decode(latents).shape == (3, 3, 64, 64)
    assert tiny_backbone.encode_text(["a", "b"]).shape == (2, 77, 32)


def test_calibration_keeps_vae_round_trip():
    """Scaling quant_conv by c and post_quant_conv by 1/c must not change decode(encode(x))."""
    backbone = load_backbone("tiny", seed=3)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    vae = backbone.vae
    with torch.no_grad():
        h = vae.encoder(images * 2 - 1)
        moments = vae.quant_conv(h)
        mean = moments[:, :4]
        direct = vae.decoder(vae.post_quant_conv(mean))
    assert torch.allclose(backbone.decode(backbone.encode_images(images)), ((direct + 1) / 2).clamp(0, 1), atol=1e-4)


def test_presets_are_deterministic():
    a, b = load_backbone("tiny", seed=0), load_backbone("tiny", seed=0)
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb)
    assert a.random_weights and a.weights_source == "tiny:random"


def test_missing_hub_weights_offline_name_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BackboneLoadError, match="CompVis/stable-diffusion-v1-4"):
        load_backbone("CompVis/stable-diffusion-v1-4")


def test_folder_that_is_not_a_diffusers_model(tmp_path):
    (tmp_path / "weights.ckpt").write_bytes(b"x")
    with pytest.raises(BackboneLoadError, match="not a diffusers"):
        load_backbone(str(tmp_path))


def test_local_folder_round_trip(tmp_path, tiny_backbone):
    """A diffusers folder saved with safetensors loads back into the same backbone."""
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny_backbone, part).save_pretrained(tmp_path / part)
    (tmp_path / "model_index.json").write_text("{}")
    loaded = load_backbone(str(tmp_path))
    assert not loaded.random_weights
    for pa, pb in zip(loaded.unet.parameters(), tiny_backbone.unet.parameters()):
        assert torch.equal(pa, pb)
    assert loaded.encode_text(["a cat"]).allclose(tiny_backbone.encode_text(["a cat"]))
