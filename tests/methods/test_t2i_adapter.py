"""`t2i_adapter` (methods/t2i_adapter.py): scale 0 and factor 0 are plain generation, a nonzero scale
changes it, batched points, per-sample noise, parameters and backbone checks."""

from __future__ import annotations

import pytest
import torch

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.ddim import ddim_sample, make_schedule
from editsweep.methods.base import METHODS, get_method_class
from editsweep.methods.controlnet import ControlNetParams
from editsweep.methods.t2i_adapter import T2IAdapterEditParams, T2IAdapterParams

TINY = T2IAdapterParams(adapter="tiny")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def method():
    return get_method_class("t2i_adapter")()


@pytest.fixture(scope="module")
def samples(generated_samples):
    return [Sample(s.id, s.image, "a blue bird in the sky", s.source_prompt) for s in generated_samples[:2]]


def test_scale_0_and_factor_0_are_plain_generation_and_the_adapter_changes_it(backbone, method, samples, generators):
    """Scale 0 (or the adapter over no step) equals DDIM sampling with the target prompt from the same
    noise (measured max pixel difference 0.0 for a point run alone; batched with other points the
    larger UNet batch moves it by ~4e-6); scale 1 moves the image (measured mean absolute 4.3e-3 with
    the random tiny adapter and VAE, 5 steps), the adapter over the first 2 of 5 steps slightly less
    (4.2e-3: the early steps settle the layout, as the paper's Sec. 4 observes)."""
    state = method.invert(backbone, samples, TINY, generators(2))
    cond, uncond = backbone.encode_text([s.target_prompt for s in samples]), backbone.encode_text(["", ""])
    plain = backbone.decode(ddim_sample(backbone, state["noise"], make_schedule(backbone, 5), cond, uncond, 7.5))
    for off in (T2IAdapterEditParams(steps=5, adapter_conditioning_scale=0.0),
                T2IAdapterEditParams(steps=5, adapter_conditioning_factor=0.0)):
        (image,) = method.edit(backbone, state, samples, TINY, [off], generators(2))
        assert (image - plain).abs().max().item() < 1e-6
    points = [T2IAdapterEditParams(steps=5), T2IAdapterEditParams(steps=5, adapter_conditioning_factor=0.4)]
    one, early = method.edit(backbone, state, samples, TINY, points, generators(2))
    full = (one - plain).abs().mean().item()
    assert full > 2e-3
    assert 0 < (early - plain).abs().mean().item() < full


def test_points_batched_equal_points_alone(backbone, method, samples, generators):
    state = method.invert(backbone, samples, TINY, generators(2))
    points = [
        T2IAdapterEditParams(steps=4, adapter_conditioning_scale=0.5),
        T2IAdapterEditParams(steps=4, guidance=3.0, adapter_conditioning_factor=0.5),
        T2IAdapterEditParams(steps=3),
    ]
    together = method.edit(backbone, state, samples, TINY, points, generators(2))
    assert [tuple(t.shape) for t in together] == [(2, 3, 64, 64)] * 3
    for point, batched in zip(points, together):
        (alone,) = method.edit(backbone, state, samples, TINY, [point], generators(2))
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    first_state = method.invert(backbone, samples[:1], TINY, generators(1))
    (first,) = method.edit(backbone, first_state, samples[:1], TINY, points[:1], generators(1))
    torch.testing.assert_close(first, together[0][:1], rtol=0, atol=1e-4)


def test_invert_extracts_the_condition_and_draws_noise_per_sample(backbone, method, samples, generators):
    state = method.invert(backbone, samples, TINY, generators(2))
    assert state["condition"].shape == (2, 3, 64, 64)
    assert set(state["condition"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(state["noise"][1], torch.randn(4, 8, 8, generator=generators(2)[1]))
    image = method.invert(backbone, samples, T2IAdapterParams(adapter="tiny", condition="image"), generators(2))
    assert not torch.equal(image["condition"], state["condition"])


def test_params_defaults_and_checks():
    assert "t2i_adapter" in METHODS
    p, e = T2IAdapterParams(), T2IAdapterEditParams()
    assert (p.adapter, p.condition, p.low_threshold, p.high_threshold) == (
        "TencentARC/t2iadapter_canny_sd15v2", "canny", 100, 200
    )
    assert (e.adapter_conditioning_scale, e.adapter_conditioning_factor, e.guidance, e.steps) == (1.0, 1.0, 7.5, 50)
    cls = get_method_class("t2i_adapter")
    assert cls.model_sources(TINY) == {"adapter": "tiny:random"}
    assert cls.model_sources(p) == {"adapter": "TencentARC/t2iadapter_canny_sd15v2"}
    with pytest.raises(ValueError, match="unknown condition 'edges'"):
        T2IAdapterParams(condition="edges")
    with pytest.raises(ValueError, match="adapter_conditioning_factor"):
        T2IAdapterEditParams(adapter_conditioning_factor=1.5)


def spec(backbone: str) -> dict:
    return {
        "name": "t2i",
        "backbone": {"name": backbone},
        "datasets": [{"name": "synthetic", "params": {"n": 1}}],
        "methods": [{"name": "t2i_adapter", "invert": {"adapter": "tiny"}}],
        "metrics": {},
    }


def test_instruction_backbones_are_refused_before_loading():
    with pytest.raises(SpecError, match="t2i_adapter cannot run on backbone 'tiny-ip2p' .*8 input channels"):
        load_spec(spec("tiny-ip2p"))
    for backbone in ("tiny", "toy", "CompVis/stable-diffusion-v1-4", "someone/unknown-model"):
        load_spec(spec(backbone))


def test_a_depth_condition_feeds_the_adapter_and_is_recorded(backbone, method, samples, generators):
    params = T2IAdapterParams(adapter="tiny", condition="depth", depth_model="tiny")
    state = method.invert(backbone, samples, params, generators(2))
    assert state["condition"].shape == (2, 3, 64, 64)
    assert torch.equal(state["condition"][:, 0], state["condition"][:, 1])
    (image,) = method.edit(backbone, state, samples, params, [T2IAdapterEditParams(steps=2)], generators(2))
    assert image.shape == (2, 3, 64, 64)
    assert get_method_class("t2i_adapter").model_sources(params) == {"adapter": "tiny:random", "depth": "tiny:random"}
    assert get_method_class("controlnet").model_sources(
        ControlNetParams(controlnet="tiny", condition="segmentation", segmentation_model="tiny")
    ) == {"controlnet": "tiny:random", "segmentation": "tiny:random"}
