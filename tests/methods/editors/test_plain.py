"""The plain editor (methods/editors/plain.py): the target rows alone, no control."""

import torch

from editsweep.datasets.base import Sample
from editsweep.methods.base import get_method_class
from editsweep.methods.editors.plain import PlainEditor, PlainParams

STEPS = 6  # the steps of conftest.py's inversion


def test_plain_under_ddim_inversion_is_ddim_edit(tiny_backbone, generated_samples, generators, ddim_inverted):
    """DDIM inversion + plain editing is the `ddim_edit` baseline; points at one scale share a loop."""
    samples = [Sample(s.id, s.image, s.source_prompt, s.source_prompt + " in the snow") for s in generated_samples[:2]]
    images = PlainEditor().edit(
        tiny_backbone, ddim_inverted(samples), samples, [PlainParams()] * 3, [5.0, 3.0, 5.0], generators(2)
    )
    cls = get_method_class("ddim_edit")
    invert_params = cls.InvertParams(steps=STEPS)
    state = cls().invert(tiny_backbone, samples, invert_params, generators(2))
    points = [cls.EditParams(guidance=g) for g in (5.0, 3.0)]
    expected = cls().edit(tiny_backbone, state, samples, invert_params, points, generators(2))
    assert torch.equal(images[0], images[2])
    for image, want in zip(images[:2], expected, strict=True):
        assert torch.allclose(image, want, atol=1e-4)  # measured 1-2e-5 (CPU float noise; same ops)
    assert (images[0] - images[1]).abs().mean() > 1e-3
