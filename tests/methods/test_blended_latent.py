"""`blended_latent`: what it keeps outside the mask, its mask sources, and batch independence."""

import dataclasses

import numpy as np
import pytest
import torch

from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.masks import MaskError, dataset_mask
from editsweep.methods.base import get_method_class

MASK = np.zeros((64, 64), dtype=bool)
MASK[16:40, 24:48] = True  # latent cells [2:5, 3:6] of the tiny backbone's 8x8 latent


@pytest.fixture
def masked(generated_samples):
    """Two generated images with a dataset mask, edited towards one prompt."""
    return [
        dataclasses.replace(s, target_prompt="a photo of a dog", meta={"mask": MASK}) for s in generated_samples[:2]
    ]


def test_outside_the_mask_the_latent_is_the_inputs_and_the_pixel_composite_the_inputs_pixels(
    tiny_backbone, masked, generators, monkeypatch
):
    """Without the background step the final latent outside the (downsampled) mask is the input's
    latent bit for bit, so the pixels there are the VAE round trip's up to the decoder's reach across
    the mask border (measured on the trained toy VAE in tests/toy/test_semantics.py; the random tiny
    decoder mixes every pixel through its mid-block attention). With `background: pixel`, the pixels
    outside the dataset's mask are the input's exactly. A batch gives what each sample gives alone."""
    backbone, method = tiny_backbone, get_method_class("blended_latent")()
    invert = method.InvertParams()
    points = [method.EditParams(steps=6), method.EditParams(steps=6, background="pixel")]
    state = method.invert(backbone, masked, invert, generators(2))
    decoded = []
    decode = backbone.decode
    monkeypatch.setattr(backbone, "decode", lambda x: decoded.append(x) or decode(x))
    plain, composite = method.edit(backbone, state, masked, invert, points, generators(2))

    latent_mask = dataset_mask(masked[0], (8, 8)).bool()
    for final in decoded[0].split(2):  # both points share the loop
        assert torch.equal(final[:, :, ~latent_mask], state["latents"][:, :, ~latent_mask])
        assert (final - state["latents"])[:, :, latent_mask].abs().max() > 1e-2
    inputs = images_tensor(masked, backbone.device)
    assert torch.equal(composite[:, :, ~MASK], inputs[:, :, ~MASK])
    torch.testing.assert_close(composite[:, :, MASK], plain[:, :, MASK], atol=0, rtol=0)

    monkeypatch.undo()
    for b, sample in enumerate(masked):
        single = method.invert(backbone, [sample], invert, generators(1))
        alone = method.edit(backbone, single, [sample], invert, points, generators(2)[b : b + 1])
        # batched and single UNet calls round apart (up to 1.1e-5 measured on this CPU)
        torch.testing.assert_close(alone[0][0], plain[b], atol=1e-4, rtol=0)
        torch.testing.assert_close(alone[1][0], composite[b], atol=1e-4, rtol=0)


def test_dataset_mask_missing_is_an_error_naming_the_sample_and_the_alternative(tiny_backbone, masked, generators):
    method = get_method_class("blended_latent")()
    bare = [masked[0], dataclasses.replace(masked[1], id="no-mask", meta={})]
    with pytest.raises(MaskError, match=r"no-mask.*mask: diffedit"):
        method.invert(tiny_backbone, bare, method.InvertParams(), generators(2))
    state = method.invert(tiny_backbone, bare, method.InvertParams(mask="diffedit"), generators(2))
    point = method.EditParams(steps=4, mask_samples=2)
    (images,) = method.edit(tiny_backbone, state, bare, method.InvertParams(mask="diffedit"), [point], generators(2))
    assert images.shape == (2, 3, 64, 64)
