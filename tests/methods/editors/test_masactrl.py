"""MasaCtrl on the tiny backbone: algorithmic facts of mutual self-attention."""

import pytest
import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.mutual_attention import MutualControl, mutual_unet
from editsweep.diffusion.rows import denoise_rows
from editsweep.methods.editors.masactrl import MasaCtrlEditor, MasaCtrlParams

STEPS = 6  # the steps of conftest.py's inversion


def run(backbone, samples, inverted, start_step, start_layer):
    batch = len(samples)
    control = MutualControl(
        n_source=batch,
        source_index=torch.arange(batch),
        start_step=torch.full((batch,), start_step),
        start_layer=torch.full((batch,), start_layer),
    )

    def at_step(i):
        control.step = i

    with mutual_unet(backbone.unet, control):
        return denoise_rows(backbone, inverted, samples, 1, 7.5, at_step)


def test_target_equal_to_source_reproduces_the_reconstruction(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    inverted = ddim_inverted(generated_samples)
    source, target = run(tiny_backbone, generated_samples, inverted, 0, 0)
    assert torch.allclose(target, source, atol=1e-5)


def test_mutual_attention_changes_the_edit_and_inactive_control_is_plain_sampling(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    samples = [Sample(s.id, s.image, s.source_prompt, "a photo of a dog jumping") for s in generated_samples]
    inverted = ddim_inverted(samples)
    _, plain = denoise_rows(tiny_backbone, inverted, samples, 1, 7.5)
    _, never = run(tiny_backbone, samples, inverted, STEPS, 0)  # starts after the last step
    _, mutual = run(tiny_backbone, samples, inverted, 0, 0)
    assert torch.allclose(never, plain, atol=1e-5)
    assert (mutual - plain).abs().mean() > 1e-3


def test_editor_batches_points_and_matches_each_point_alone(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    samples = [Sample(s.id, s.image, s.source_prompt, s.source_prompt + " made of wood") for s in generated_samples]
    inverted = ddim_inverted(samples)
    points = [MasaCtrlParams(start_step=1, start_layer=0), MasaCtrlParams(start_step=3, start_layer=2)]
    together = MasaCtrlEditor().edit(tiny_backbone, inverted, samples, points, [7.5, 7.5], generators(3))
    for k, point in enumerate(points):
        alone = MasaCtrlEditor().edit(tiny_backbone, inverted, samples, [point], [7.5], generators(3))
        assert torch.allclose(together[k], alone[0], atol=1e-4)
    assert [t.shape for t in together] == [(3, 3, 64, 64)] * 2


def test_a_start_layer_past_the_unets_blocks_is_refused(tiny_backbone, generated_samples, generators, ddim_inverted):
    """SD's default (10 of 16 blocks) would never act on the tiny UNet's 4: an error, not a no-op."""
    inverted = ddim_inverted(generated_samples)
    with pytest.raises(ValueError, match=r"start_layer \[10\].*4 transformer blocks"):
        MasaCtrlEditor().edit(tiny_backbone, inverted, generated_samples, [MasaCtrlParams()], [7.5], generators(3))
