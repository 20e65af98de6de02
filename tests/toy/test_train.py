"""Training of the toy models (toy/train.py): a few steps of each stage make its loss fall, and the
command writes weights that load back as the toy backbone and the toy CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from editsweep.bench.cli import main
from editsweep.toy import models, train
from editsweep.toy.config import TrainConfig

STEPS = 40


def falls(losses: list[float]) -> bool:
    """The mean of the last quarter of the losses is below that of the first quarter."""
    k = max(1, len(losses) // 4)
    return float(np.mean(losses[-k:])) < 0.8 * float(np.mean(losses[:k]))


@pytest.fixture(scope="module")
def pool():
    return train.render_pool(256, seed=0)


@pytest.fixture
def config():
    return TrainConfig(pool=256, vae_steps=STEPS, vae_batch=8, unet_steps=STEPS, unet_batch=16, clip_steps=STEPS, clip_batch=32, threads=1)


def test_vae_loss_falls_and_latents_get_unit_std(pool, config, tmp_path):
    images, _ = pool
    curves = train.Curves(tmp_path, config)
    vae = train.train_vae(images, config, curves)
    assert falls(curves.losses["vae"]), curves.losses["vae"]
    latents = train.encode_pool(vae, images)
    assert latents.shape[1:] == (4, 8, 8)
    assert latents.std().item() == pytest.approx(1.0, rel=0.1)


def test_decoder_fine_tuning_sharpens_the_round_trip_and_keeps_the_latents(pool, config, tmp_path):
    images, _ = pool
    vae = train.train_vae(images, config)

    @torch.no_grad()
    def round_trip_error() -> float:
        x = images[:64] * 2 - 1
        return float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean())

    before, latents = round_trip_error(), train.encode_pool(vae, images[:32])
    curves = train.Curves(tmp_path, config)
    vae = train.train_decoder(vae, images, config.model_copy(update={"decoder_steps": 60, "vae_batch": 16}), curves)
    assert len(curves.losses["decoder"]) == 60
    assert round_trip_error() < 0.9 * before
    assert torch.equal(train.encode_pool(vae, images[:32]), latents)  # the UNet's latents are untouched


def test_unet_loss_falls(pool, config, tmp_path):
    images, scenes = pool
    latents = torch.randn(len(images), 4, 8, 8)  # the UNet stage does not need a trained VAE to learn
    curves = train.Curves(tmp_path, config)
    train.train_unet(latents, scenes, config, curves)
    assert falls(curves.losses["unet"]), curves.losses["unet"]


def test_clip_loss_falls(pool, config, tmp_path):
    images, scenes = pool
    curves = train.Curves(tmp_path, config)
    train.train_clip(images, scenes, config, curves)
    assert falls(curves.losses["clip"]), curves.losses["clip"]


def test_training_caption_drops_parts_but_keeps_colour_and_shape():
    rng = np.random.default_rng(0)
    scene = train.render_pool(1, seed=3)[1][0]
    captions = {train.training_caption(scene, rng) for _ in range(200)}
    assert scene.caption() in captions and len(captions) == 8
    obj = scene.objects[0]
    assert all(f"{obj.color} {obj.shape}" in c for c in captions)


def test_toy_train_command_writes_loadable_weights(tmp_path, capsys):
    out = tmp_path / "toy"
    args = ["toy", "train", "--out", str(out), "--pool", "64", "--threads", "1"]
    args += ["--vae-steps", "2", "--unet-steps", "2", "--decoder-steps", "2", "--clip-steps", "2", "--vae-batch", "4", "--unet-batch", "4", "--clip-batch", "4"]
    assert main(args) == 0
    assert "toy models trained" in capsys.readouterr().out
    unet, vae, text_encoder, _ = models.load_backbone_parts(out)
    assert vae.config.scaling_factor == json.loads((out / "backbone.json").read_text())["scaling_factor"]
    assert (out / "loss.png").stat().st_size > 0
    record = json.loads((out / "train.json").read_text())
    assert set(record["losses"]) == {"vae", "unet", "decoder", "clip"} and record["config"]["seed"] == 0
    import open_clip

    clip = open_clip.create_model(f"local-dir:{out / models.CLIP_FOLDER}", require_pretrained=True)
    assert clip.encode_image(torch.rand(1, 3, 32, 32)).shape == (1, models.CLIP_CONFIG["embed_dim"])


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"toy backbone's weights are missing .*editsweep toy train"):
        models.load_backbone_parts(tmp_path)
