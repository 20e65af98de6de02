"""VAE round trip: decode(encode(input)) at every point."""

import torch

from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import Params, get_method_class


def test_output_is_the_autoencoder_reconstruction_at_every_point(tiny_backbone, generated_samples, generators):
    method = get_method_class("vae_roundtrip")()
    state = method.invert(tiny_backbone, generated_samples, Params(), generators(3))
    out = method.edit(tiny_backbone, state, generated_samples, Params(), [Params(), Params()], generators(3))
    inputs = images_tensor(generated_samples, tiny_backbone.device)
    expected = tiny_backbone.decode(tiny_backbone.encode_images(inputs))
    assert len(out) == 2 and out[0].shape == inputs.shape
    for images in out:
        torch.testing.assert_close(images, expected)
    assert not torch.equal(out[0], inputs)  # the autoencoder is lossy: this is not `copy`

