"""`controlnet` (methods/controlnet.py): scale 0 is plain generation, a nonzero scale changes it,
batched points, per-sample noise, parameters and backbone checks."""

from __future__ import annotations

import pytest
import torch

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.ddim import ddim_sample, make_schedule
from editsweep.methods.base import METHODS, get_method_class
from editsweep.methods.controlnet import ControlNetEditParams, ControlNetParams

TINY = ControlNetParams(controlnet="tiny")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def method():
    return get_method_class("controlnet")()


@pytest.fixture(scope="module")
def samples(generated_samples):
    return [Sample(s.id, s.image, "a blue bird in the sky", s.source_prompt) for s in generated_samples[:2]]


def test_scale_0_is_plain_generation_and_a_nonzero_scale_changes_it(backbone, method, samples, generators):
    """Scale 0 equals DDIM sampling with the target prompt from the same noise (measured max pixel
    difference 0.0: the residuals are multiplied by 0 and added); scale 1 moves the image by a mean
    absolute 6.0e-3 (max 7.0e-2) with the random tiny ControlNet and VAE, 5 steps."""
    state = method.invert(backbone, samples, TINY, generators(2))
    points = [ControlNetEditParams(steps=5, conditioning_scale=s) for s in (0.0, 1.0)]
    zero, one = method.edit(backbone, state, samples, TINY, points, generators(2))
    cond, uncond = backbone.encode_text([s.target_prompt for s in samples]), backbone.encode_text(["", ""])
    plain = backbone.decode(ddim_sample(backbone, state["noise"], make_schedule(backbone, 5), cond, uncond, 7.5))
    assert (zero - plain).abs().max().item() < 1e-5
    assert (one - plain).abs().mean().item() > 2e-3


def test_a_window_outside_every_step_is_plain_generation(backbone, method, samples, generators):
    state = method.invert(backbone, samples, TINY, generators(2))
    points = [ControlNetEditParams(steps=4, control_start=0.0, control_end=0.0), ControlNetEditParams(steps=4)]
    off, on = method.edit(backbone, state, samples, TINY, points, generators(2))
    (zero,) = method.edit(backbone, state, samples, TINY, [ControlNetEditParams(steps=4, conditioning_scale=0)],
                          generators(2))
    torch.testing.assert_close(off, zero, rtol=0, atol=1e-5)
    assert (on - zero).abs().mean() > 2e-3


def test_points_batched_equal_points_alone(backbone, method, samples, generators):
    state = method.invert(backbone, samples, TINY, generators(2))
    points = [
        ControlNetEditParams(steps=4, conditioning_scale=0.5),
        ControlNetEditParams(steps=4, guidance=3.0, control_start=0.25),
        ControlNetEditParams(steps=3, guess_mode=True),
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
    gray = method.invert(backbone, samples, ControlNetParams(controlnet="tiny", condition="gray"), generators(2))
    assert not torch.equal(gray["condition"], state["condition"])


def test_params_defaults_and_checks():
    assert "controlnet" in METHODS
    p, e = ControlNetParams(), ControlNetEditParams()
    assert (p.controlnet, p.condition, p.low_threshold, p.high_threshold) == (
        "lllyasviel/sd-controlnet-canny", "canny", 100, 200
    )
    assert (e.conditioning_scale, e.guidance, e.steps, e.control_start, e.control_end, e.guess_mode) == (
        1.0, 7.5, 50, 0.0, 1.0, False
    )
    cls = get_method_class("controlnet")
    assert cls.model_sources(TINY) == {"controlnet": "tiny:random"}
    assert cls.model_sources(p) == {"controlnet": "lllyasviel/sd-controlnet-canny"}
    with pytest.raises(ValueError, match="unknown condition 'normals'"):
        ControlNetParams(condition="normals")
    with pytest.raises(ValueError, match="low_threshold 300.0 is above high_threshold 200.0"):
        ControlNetParams(low_threshold=300)
    with pytest.raises(ValueError, match="control_start 0.8 is after control_end 0.5"):
        ControlNetEditParams(control_start=0.8, control_end=0.5)


def spec(backbone: str) -> dict:
    return {
        "name": "cn",
        "backbone": {"name": backbone},
        "datasets": [{"name": "synthetic", "params": {"n": 1}}],
        "methods": [{"name": "controlnet", "invert": {"controlnet": "tiny"}}],
        "metrics": {},
    }


def test_instruction_backbones_are_refused_before_loading():
    with pytest.raises(SpecError, match="controlnet cannot run on backbone 'tiny-ip2p' .*8 input channels"):
        load_spec(spec("tiny-ip2p"))
    for backbone in ("tiny", "toy", "CompVis/stable-diffusion-v1-4", "someone/unknown-model"):
        load_spec(spec(backbone))
