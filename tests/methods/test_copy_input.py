import torch

from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import Params, get_method_class


def test_copy_returns_the_input_at_every_point(tiny_backbone, generated_samples, generators):
    method = get_method_class("copy")()
    state = method.invert(tiny_backbone, generated_samples, Params(), generators(3))
    out = method.edit(tiny_backbone, state, generated_samples, Params(), [Params(), Params()], generators(3))
    expected = images_tensor(generated_samples, tiny_backbone.device)
    assert len(out) == 2
    for images in out:
        assert torch.equal(images, expected)
