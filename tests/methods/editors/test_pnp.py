"""Plug-and-Play on the tiny backbone: algorithmic facts of its feature and query/key injection."""

import dataclasses

import pytest
import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.ddim import ddim_sample
from editsweep.diffusion.inputs import source_prompts
from editsweep.diffusion.plug_and_play import PnPControl, pnp_unet
from editsweep.diffusion.rows import denoise_rows
from editsweep.methods.editors.pnp import PnPEditor, PnPParams, retracing

STEPS = 6  # the steps of conftest.py's inversion
TINY = {"feature_layer": 1, "attention_layer": 2}  # the tiny UNet's decoder: 4 layers, attention at 2 and 3


def edited(samples):
    return [Sample(s.id, s.image, s.source_prompt, "a photo of a dog made of wood") for s in samples]


def run(backbone, samples, inverted, feature_steps, attention_steps, scale=7.5):
    batch = len(samples)
    control = PnPControl(
        n_source=batch,
        source_index=torch.arange(batch),
        feature_steps=torch.full((batch,), feature_steps),
        attention_steps=torch.full((batch,), attention_steps),
        feature_layer=torch.full((batch,), TINY["feature_layer"]),
        attention_layer=torch.full((batch,), TINY["attention_layer"]),
    )

    def at_step(i):
        control.step = i

    with pnp_unet(backbone.unet, control):
        return denoise_rows(backbone, inverted, samples, 1, scale, at_step)


def test_target_equal_to_source_reproduces_the_reconstruction(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    """At guidance 1 (one pass, whose source features are the ones injected), a target with the
    source prompt whose features and queries/keys are the source's is the source row. Under
    guidance both halves take the unconditional half's, as the reference, so the target's
    conditional half differs from the source's."""
    inverted = ddim_inverted(generated_samples)
    source, target = run(tiny_backbone, generated_samples, inverted, STEPS, STEPS, scale=1.0)
    assert torch.allclose(target, source, atol=1e-5)


def test_injection_changes_the_edit_and_zero_thresholds_are_plain_sampling(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    samples = edited(generated_samples)
    inverted = ddim_inverted(samples)
    _, plain = denoise_rows(tiny_backbone, inverted, samples, 1, 7.5)
    _, never = run(tiny_backbone, samples, inverted, 0, 0)
    _, features = run(tiny_backbone, samples, inverted, STEPS, 0)
    _, attention = run(tiny_backbone, samples, inverted, 0, STEPS)
    assert torch.allclose(never, plain, atol=1e-5)
    assert (features - plain).abs().mean() > 1e-3
    assert (attention - plain).abs().mean() > 1e-3
    assert (attention - features).abs().mean() > 1e-3


def test_under_ddim_the_source_rows_are_the_guidance_1_reconstruction(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    """As the reference's ddim+pnp, the source branch retraces DDIM sampling at guidance 1 with the
    source prompt whatever the edit's scale; an inversion with its own scale keeps it."""
    samples = edited(generated_samples)
    inverted = ddim_inverted(samples)
    cond = tiny_backbone.encode_text(source_prompts(samples))
    reconstruction = ddim_sample(tiny_backbone, inverted.start, inverted.schedule, cond)
    source, _ = denoise_rows(tiny_backbone, retracing(inverted), samples, 1, 7.5)
    assert torch.allclose(source, reconstruction, atol=1e-4)
    assert retracing(dataclasses.replace(inverted, guidance=7.5)).source_guidance == 7.5
    assert retracing(dataclasses.replace(inverted, source_guidance=3.5)).source_guidance == 3.5


def test_editor_batches_points_and_matches_each_point_alone(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    samples = edited(generated_samples)
    inverted = ddim_inverted(samples)
    points = [
        PnPParams(feature_threshold=0.8, attention_threshold=0.5, **TINY),
        PnPParams(feature_threshold=0.3, attention_threshold=1.0, feature_layer=0, attention_layer=3),
    ]
    together = PnPEditor().edit(tiny_backbone, inverted, samples, points, [7.5, 7.5], generators(3))
    for k, point in enumerate(points):
        alone = PnPEditor().edit(tiny_backbone, inverted, samples, [point], [7.5], generators(3))
        assert torch.allclose(together[k], alone[0], atol=1e-4)
    assert [t.shape for t in together] == [(3, 3, 64, 64)] * 2


@pytest.mark.parametrize(
    ("point", "message"),
    [
        (PnPParams(attention_layer=2), r"feature_layer \[4\] is past this UNet's 4 decoder layers"),
        (PnPParams(feature_layer=1), r"attention_layer \[4\] is past .* last decoder layer with attention \(3\)"),
    ],
)
def test_sd_layers_past_the_tiny_decoder_are_refused(
    tiny_backbone, generated_samples, generators, point, message, ddim_inverted
):
    """SD's defaults (decoder layer 4 of 12) would inject nothing into the tiny UNet's 4: an error."""
    inverted = ddim_inverted(generated_samples)
    with pytest.raises(ValueError, match=message):
        PnPEditor().edit(tiny_backbone, inverted, generated_samples, [point], [7.5], generators(3))
