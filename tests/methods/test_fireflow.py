"""fireflow (methods/fireflow.py) on the tiny SD3 and FLUX backbones."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class
from editsweep.methods.fireflow import FireFlowEditParams, FireFlowInversionParams
from editsweep.diffusion.flow import FlowInversionParams, FlowSampleParams


@pytest.fixture(scope="module", params=["sd3", "flux"])
def backbone(request):
    return load_backbone(f"tiny-{request.param}")


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(0)
    coarse = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=gen), size=64, mode="bicubic")
    images = [Image.fromarray((c.clamp(0, 1).permute(1, 2, 0) * 255).byte().numpy()) for c in coarse]
    return [Sample("a", images[0], "a blue cube", "a red cube"), Sample("b", images[1], "a dog", "a cat")]


def _solve(path, velocity):
    fake = SimpleNamespace(predict_velocity=lambda x, s, text, g, neg: velocity(s))
    return get_method_class("fireflow")().solve(fake, torch.zeros(1, 4, 2, 2), path, None, None, None, None)


def test_solver_is_exact_for_a_velocity_linear_in_time():
    """The midpoint rule integrates v(sigma) = a + b sigma exactly, both ways, whatever velocity is
    carried over (it only sets the midpoint's position, which this velocity ignores)."""
    a, b = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    sigmas = torch.tensor([1.0, 0.7, 0.45, 0.2, 0.0])
    down = [(sigmas[i], sigmas[i + 1], i) for i in range(4)]
    up = [(sigmas[i + 1], sigmas[i], i) for i in reversed(range(4))]
    exact = a * (sigmas[-1] - sigmas[0]) + b * (sigmas[-1] ** 2 - sigmas[0] ** 2) / 2
    torch.testing.assert_close(_solve(down, lambda s: a + b * s), exact)
    torch.testing.assert_close(_solve(up, lambda s: a + b * s), -exact)


def test_one_model_call_per_step_after_the_first(backbone, samples, generators):
    method = get_method_class("fireflow")()
    calls = []
    original = backbone.predict_velocity
    backbone.predict_velocity = lambda *args: calls.append(args[1]) or original(*args)
    try:
        params = FireFlowInversionParams(steps=4, inject=0)
        state = method.invert(backbone, samples, params, generators(2))
        assert len(calls) == 4 + 1
        method.edit(backbone, state, samples, params, [FireFlowEditParams(), FireFlowEditParams()], generators(2))
        assert len(calls) == 2 * (4 + 1)  # both edit points in one batch
    finally:
        del backbone.predict_velocity


def test_reconstructs_better_than_euler_at_equal_model_calls(backbone, samples, generators):
    same = [Sample(s.id, s.image, s.source_prompt, s.source_prompt) for s in samples]
    round_trip = backbone.decode(backbone.encode_images(images_tensor(same, backbone.device)))
    fireflow = get_method_class("fireflow")()
    params = FireFlowInversionParams(steps=5, inversion_guidance=1.0, inject=0)  # 6 calls a pass
    state = fireflow.invert(backbone, same, params, generators(2))
    (out,) = fireflow.edit(backbone, state, same, params, [FireFlowEditParams(guidance=1.0)], generators(2))
    euler = get_method_class("flow_inversion")()
    base = FlowInversionParams(steps=6)  # 6 calls a pass
    reference = euler.invert(backbone, same, base, generators(2))
    (ref,) = euler.edit(backbone, reference, same, base, [FlowSampleParams(guidance=1.0)], generators(2))
    fireflow_error, euler_error = (out - round_trip).abs().mean(), (ref - round_trip).abs().mean()
    # measured (mean absolute pixel error, 6 model calls a pass): FireFlow 0.00081 (SD3), 0.00051 (FLUX);
    # Euler 0.0161 (SD3), 0.0189 (FLUX)
    assert fireflow_error < 0.002
    assert fireflow_error < euler_error / 10


def test_points_are_batched_and_guidance_defaults_per_family(backbone, samples, generators):
    method = get_method_class("fireflow")()
    params = FireFlowInversionParams(steps=3, strength=0.7)
    state = method.invert(backbone, samples, params, generators(2))
    points = [FireFlowEditParams(), FireFlowEditParams(guidance=1.0)]
    together = method.edit(backbone, state, samples, params, points, generators(2))
    default = {"sd3": 7.0, "flux": 2.0}[backbone.family]
    (alone,) = method.edit(backbone, state, samples, params, [FireFlowEditParams(guidance=default)], generators(2))
    torch.testing.assert_close(together[0], alone, rtol=0, atol=1e-4)
    assert (together[0] - together[1]).abs().mean() > 1e-4


def test_feature_sharing_saves_the_injected_midpoint_values_and_changes_the_edit(backbone, samples, generators):
    method = get_method_class("fireflow")()
    if backbone.family == "sd3":
        with pytest.raises(ValueError, match="set inject to 0 on SD3"):
            method.invert(backbone, samples, FireFlowInversionParams(steps=3, inject=1), generators(2))
        return
    shared, plain = FireFlowInversionParams(steps=3), FireFlowInversionParams(steps=3, inject=0)
    assert shared.resolved_inject("flux") == 1
    state = method.invert(backbone, samples, shared, generators(2))
    blocks = len(backbone.transformer.single_transformer_blocks)
    assert sorted(k for k in state if k.startswith("value.")) == sorted(f"value.0.1.{b}" for b in range(blocks))
    bare = method.invert(backbone, samples, plain, generators(2))
    torch.testing.assert_close(state["latents"], bare["latents"], rtol=0, atol=0)  # saving changes nothing
    (with_sharing,) = method.edit(backbone, state, samples, shared, [FireFlowEditParams()], generators(2))
    (without,) = method.edit(backbone, bare, samples, plain, [FireFlowEditParams()], generators(2))
    assert (with_sharing - without).abs().mean() > 1e-4


def test_paper_defaults():
    params = FireFlowInversionParams()
    assert (params.steps, params.resolved_inject("flux"), params.resolved_inject("sd3")) == (8, 1, 0)
    with pytest.raises(ValueError, match="must not exceed steps"):
        FireFlowInversionParams(steps=3, inject=4)
