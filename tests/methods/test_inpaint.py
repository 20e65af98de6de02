"""`inpaint` (methods/inpaint.py): what each `keep_outside` keeps outside the mask, mask sources,
batching, and backbone checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from editsweep.bench.cli import main
from editsweep.bench.spec import SpecError, load_spec
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.masks import MaskError
from editsweep.methods.base import get_method_class
from editsweep.methods.inpaint import InpaintEditParams, InpaintInvertParams

MASK = np.zeros((64, 64), dtype=bool)
MASK[13:40, 22:47] = True  # edges off the 8-pixel grid: latent cells [2:5, 3:6] (nearest samples pixel 8i)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-inpaint")


@pytest.fixture(scope="module")
def method():
    return get_method_class("inpaint")()


@pytest.fixture
def masked(generated_samples):
    return [
        dataclasses.replace(s, target_prompt="a photo of a dog", meta={"mask": MASK}) for s in generated_samples[:2]
    ]


def test_keep_outside(backbone, method, masked, generators, monkeypatch):
    """What "unchanged outside the mask" means for each choice, exactly:
    - latent: the final latent equals the input's (posterior mean) bit for bit in every latent cell
      the nearest-downsampled mask leaves out; pixels there are the VAE round trip's only up to the
      decoder's reach (the random tiny decoder mixes every pixel through its mid-block attention);
    - pixel: every pixel outside the dataset's full-resolution mask is the input's bit for bit, and
      inside it the image is the `none` edit's;
    - none: the 9-channel UNet alone changes the latent outside the mask (measured > 0.1)."""
    invert = InpaintInvertParams()
    points = [InpaintEditParams(steps=6, keep_outside=k) for k in ("none", "pixel", "latent")]
    state = method.invert(backbone, masked, invert, generators(2))
    decoded = []
    decode = backbone.decode
    monkeypatch.setattr(backbone, "decode", lambda x: decoded.append(x) or decode(x))
    plain, composite, _ = method.edit(backbone, state, masked, invert, points, generators(2))
    monkeypatch.undo()
    free, kept = decoded[0].split(2)[0], decoded[1]  # none and pixel share a loop; latent has its own
    outside = (state["mask"] == 0).expand_as(kept)
    assert outside.any() and (~outside).any()
    assert torch.equal(kept[outside], state["latents"][outside])
    assert (free[outside] - state["latents"][outside]).abs().max() > 0.1
    inputs = images_tensor(masked, backbone.device)
    assert torch.equal(composite[:, :, ~MASK], inputs[:, :, ~MASK])
    assert torch.equal(composite[:, :, MASK], plain[:, :, MASK])


def test_points_batched_equal_points_alone_and_samples_alone(backbone, method, masked, generators):
    invert = InpaintInvertParams()
    points = [
        InpaintEditParams(steps=4, guidance=7.5),
        InpaintEditParams(steps=4, guidance=3.0),
        InpaintEditParams(steps=4, strength=0.5, keep_outside="latent"),
    ]
    state = method.invert(backbone, masked, invert, generators(2))
    together = method.edit(backbone, state, masked, invert, points, generators(2))
    assert [tuple(t.shape) for t in together] == [(2, 3, 64, 64)] * 3
    for point, batched in zip(points, together):
        (alone,) = method.edit(backbone, state, masked, invert, [point], generators(2))
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    single = method.invert(backbone, masked[1:], invert, generators(2)[1:])
    for batched, alone in zip(together, method.edit(backbone, single, masked[1:], invert, points, generators(1))):
        torch.testing.assert_close(batched[1:], alone, rtol=0, atol=1e-4)


def test_invert_draws_each_samples_noise_and_masks_the_image(backbone, method, masked, generators):
    state = method.invert(backbone, masked, InpaintInvertParams(), generators(2))
    assert torch.equal(state["noise"][1], torch.randn(4, 8, 8, generator=generators(2)[1]))
    expected = torch.zeros(8, 8)
    expected[2:5, 3:6] = 1  # the pipeline's nearest resize takes pixel 8i of each cell
    assert torch.equal(state["mask"][0, 0], expected)
    assert torch.equal(state["pixel_mask"][0].bool(), torch.from_numpy(MASK))


def test_diffedit_mask_on_the_inpainting_unet(backbone, method, masked, generators):
    bare = [dataclasses.replace(s, meta={}) for s in masked]
    invert = InpaintInvertParams(mask="diffedit", mask_samples=2, mask_steps=10)
    state = method.invert(backbone, bare, invert, generators(2))
    assert set(state["mask"].unique().tolist()) <= {0.0, 1.0} and 0 < state["mask"].mean() < 1
    again = method.invert(backbone, bare[:1], invert, generators(1))
    assert torch.equal(again["mask"], state["mask"][:1])
    (images,) = method.edit(backbone, state, bare, invert, [InpaintEditParams(steps=3)], generators(2))
    assert images.shape == (2, 3, 64, 64)


def test_dataset_mask_missing_is_an_error_naming_the_sample(backbone, method, masked, generators):
    bare = [masked[0], dataclasses.replace(masked[1], id="no-mask", meta={})]
    with pytest.raises(MaskError, match=r"no-mask.*mask: diffedit"):
        method.invert(backbone, bare, InpaintInvertParams(), generators(2))


def spec(backbone: str) -> dict:
    return {
        "name": "inpaint",
        "backbone": {"name": backbone},
        "datasets": [{"name": "synthetic", "params": {"n": 1}}],
        "methods": [{"name": "inpaint", "invert": {"mask": "diffedit"}}],
        "metrics": {},
    }


@pytest.mark.parametrize("backbone", ["tiny", "tiny-ip2p", "toy", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_non_inpainting_backbones_are_refused_before_loading(backbone):
    with pytest.raises(SpecError) as err:
        load_spec(spec(backbone))
    message = str(err.value)
    assert f"inpaint cannot run on backbone {backbone!r}" in message and "input channels" in message
    assert "tiny-inpaint" in message and "stabilityai/stable-diffusion-2-inpainting" in message


@pytest.mark.parametrize(
    "backbone", ["tiny-inpaint", "stable-diffusion-v1-5/stable-diffusion-inpainting", "someone/unknown-model"]
)
def test_inpainting_and_unknown_backbones_validate(backbone):
    load_spec(spec(backbone))


def test_a_loaded_text_to_image_unet_is_a_clear_error(tiny_backbone, method, masked, generators):
    with pytest.raises(ValueError, match="inpaint cannot run on backbone 'tiny': its UNet takes 4 input channels"):
        method.invert(tiny_backbone, masked, InpaintInvertParams(), generators(2))


def test_listed(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "\ninpaint: Regenerate the masked region" in out and "keep_outside" in out
