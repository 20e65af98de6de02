"""rf_inversion (methods/rf_inversion.py) on the tiny SD3 and FLUX backbones."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class
from editsweep.diffusion.flow import FlowInversionParams, FlowSampleParams
from editsweep.methods.rf_inversion import RFEditParams, RFInversionParams


@pytest.fixture(scope="module", params=["sd3", "flux"])
def backbone(request):
    return load_backbone(f"tiny-{request.param}")


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(0)
    coarse = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=gen), size=64, mode="bicubic")
    images = [Image.fromarray((c.clamp(0, 1).permute(1, 2, 0) * 255).byte().numpy()) for c in coarse]
    return [Sample("a", images[0], "a blue cube", "a red cube"), Sample("b", images[1], "a dog", "a cat")]


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_controller_strength_0_is_plain_flow_inversion(backbone, samples, generators, strength):
    rf, plain = get_method_class("rf_inversion")(), get_method_class("flow_inversion")()
    params = RFInversionParams(steps=6, strength=strength, gamma=0.0, inversion_prompt="source")
    base = FlowInversionParams(steps=6, strength=strength)
    state = rf.invert(backbone, samples, params, generators(2))
    reference = plain.invert(backbone, samples, base, generators(2))
    torch.testing.assert_close(state["latents"], reference["latents"], rtol=0, atol=0)
    (out,) = rf.edit(backbone, state, samples, params, [RFEditParams(eta=0.0, guidance=2.0)], generators(2))
    (ref,) = plain.edit(backbone, reference, samples, base, [FlowSampleParams(guidance=2.0)], generators(2))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_full_controllers_reach_the_noise_sample_and_come_back_to_the_input(backbone, samples, generators):
    """gamma 1 follows the straight line to y1 (reached at sigma 1); eta 1 on every step follows the
    straight line back to y0, so the edit is the VAE round trip whatever the prompt."""
    method = get_method_class("rf_inversion")()
    params = RFInversionParams(steps=6, gamma=1.0)
    state = method.invert(backbone, samples, params, generators(2))
    y1 = torch.stack([torch.randn(state["latents"].shape[1:], generator=g) for g in generators(2)])
    torch.testing.assert_close(state["latents"], y1, rtol=0, atol=1e-5)
    (out,) = method.edit(backbone, state, samples, params, [RFEditParams(eta=1.0, stop=1.0)], generators(2))
    round_trip = backbone.decode(backbone.encode_images(images_tensor(samples, backbone.device)))
    torch.testing.assert_close(out, round_trip, rtol=0, atol=1e-4)


def test_points_are_batched(backbone, samples, generators):
    method = get_method_class("rf_inversion")()
    params = RFInversionParams(steps=6)
    state = method.invert(backbone, samples, params, generators(2))
    points = [RFEditParams(), RFEditParams(eta=0.5, start=0.2, stop=0.7, guidance=1.0)]
    together = method.edit(backbone, state, samples, params, points, generators(2))
    for point, out in zip(points, together, strict=True):
        (alone,) = method.edit(backbone, state, samples, params, [point], generators(2))
        torch.testing.assert_close(out, alone, rtol=0, atol=1e-4)
    assert (together[0] - together[1]).abs().mean() > 1e-4


def test_start_after_stop_is_refused():
    with pytest.raises(ValueError, match="must not exceed stop"):
        RFEditParams(start=0.5, stop=0.2)
