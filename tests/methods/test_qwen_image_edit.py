"""`qwen_image_edit` (methods/qwen_image_edit.py) on the tiny Qwen-Image-Edit weights: equal to calling
diffusers' QwenImageEditPipeline directly, batch invariant, instructions, families."""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.methods.base import get_method_class
from editsweep.methods.qwen_image_edit import QwenImageEditParams


@pytest.fixture(scope="module")
def qwen():
    return load_backbone("tiny-qwen-image")


@pytest.fixture(scope="module")
def method():
    return get_method_class("qwen_image_edit")()


@pytest.fixture(scope="module")
def samples(generated_samples):
    first, second = generated_samples[:2]
    return [
        Sample(first.id, first.image, first.source_prompt, "a photo of a dog", {"editing_instruction": "make it a dog"}),
        Sample(second.id, second.image, second.source_prompt, "a blue car on a road"),
    ]


def _edit(method, qwen, samples, points, seeds):
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    state = method.invert(qwen, samples, method.InvertParams(), generators)
    return method.edit(qwen, state, samples, method.InvertParams(), points, generators)


def test_edit_equals_the_diffusers_pipeline(method, qwen, samples, monkeypatch):
    """Same image, instruction (the sample's editing_instruction), negative prompt " " and noise (drawn
    from the sample's generator, given as `latents=`): the pipeline's output, to float tolerance. The
    pipeline's 1024 x 1024 conditioning area is set to the tiny preset's (`resolution ** 2`)."""
    original = pipeline_qwenimage_edit.calculate_dimensions
    monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda a, r: original(qwen.resolution**2, r))
    ours = _edit(method, qwen, samples[:1], [QwenImageEditParams(steps=3)], [7])[0]
    noise = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(7))
    theirs = qwen.pipe(
        image=[samples[0].image], prompt="make it a dog", negative_prompt=" ", true_cfg_scale=4.0,
        num_inference_steps=3, height=64, width=64, latents=qwen.pipe._pack_latents(noise[None], 1, 4, 8, 8),
        output_type="pt",
    ).images
    assert ours.shape == (1, 3, 64, 64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_two_samples_at_two_points_equal_one_at_a_time(method, qwen, samples):
    points = [
        QwenImageEditParams(steps=2, true_cfg_scale=4.0),
        QwenImageEditParams(steps=2, true_cfg_scale=1.0, instruction="template", negative_prompt="blurry"),
    ]
    together = _edit(method, qwen, samples, points, [0, 1])
    for k, point in enumerate(points):
        for b, sample in enumerate(samples):
            alone = _edit(method, qwen, [sample], [point], [b])[0]
            torch.testing.assert_close(together[k][b : b + 1], alone, rtol=0, atol=1e-5)
    # the points differ (by ~1e-3 on these random weights, whose text conditioning is weak): rows not swapped
    assert (together[0] - together[1]).abs().max() > 1e-4


def test_points_with_different_negative_prompts_run_together(method, qwen, samples):
    points = [QwenImageEditParams(steps=2, negative_prompt=n) for n in (" ", "blurry, low quality")]
    together = _edit(method, qwen, samples[:1], points, [0])
    alone = _edit(method, qwen, samples[:1], points[1:], [0])[0]
    torch.testing.assert_close(together[1], alone, rtol=0, atol=1e-5)


def test_one_step_is_refused_at_validation():
    """FlowMatchEulerDiscreteScheduler's stretch to Qwen-Image's terminal sigma is 0/0 at one step."""
    with pytest.raises(ValueError, match="steps"):
        QwenImageEditParams(steps=1)


def test_it_runs_on_the_qwen_image_family_only(method):
    assert method.refuse_family("qwen-image") is None
    assert "qwen-image" in method.refuse_family("sd")
    with pytest.raises(ValueError, match="tiny-qwen-image"):
        method.invert(load_backbone("tiny"), [], method.InvertParams(), [])


def test_a_spec_pairing_it_with_another_family_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: x\nbackbone: {name: tiny}\ndatasets: [{name: synthetic, params: {n: 1, size: 64}}]\n"
        "methods: [{name: qwen_image_edit, edit: {steps: 2}}]\nmetrics: {}\nallow_random_weights: true\n"
    )
    with pytest.raises(SpecError, match="qwen_image_edit runs on backbone families qwen-image"):
        load_spec(spec)


def test_an_input_off_the_16_px_grid_comes_back_at_its_size(method, qwen, samples):
    sample = Sample("off-grid", samples[0].image.resize((72, 72)), "a cat", "a dog")
    (out,) = _edit(method, qwen, [sample], [QwenImageEditParams(steps=2)], [0])
    assert out.shape == (1, 3, 72, 72) and 0 <= out.min() and out.max() <= 1
