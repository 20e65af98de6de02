"""MasaCtrl's mask variant (MaskAuto) on the tiny backbone: masks from cross-attention restrict the
mutual self-attention (the unmasked editor's facts are in test_masactrl.py)."""

import torch

from editsweep.datasets.base import Sample
from editsweep.methods.editors.masactrl import MasaCtrlEditor, MasaCtrlParams


def edit(backbone, samples, inverted, points, generators):
    return MasaCtrlEditor().edit(backbone, inverted, samples, points, [7.5] * len(points), generators(len(samples)))


def test_a_mask_that_covers_everything_is_the_unmasked_edit_and_a_real_mask_acts(
    tiny_backbone, generated_samples, generators, ddim_inverted
):
    """Threshold 0 puts every pixel of both maps in the foreground: each target query then attends
    to all of its source's keys, which is plain MasaCtrl; the default threshold 0.1 changes it."""
    samples = [Sample(s.id, s.image, source_prompt=s.source_prompt, target_prompt=s.source_prompt + " jumping") for s in generated_samples[:2]]
    inverted = ddim_inverted(samples)
    plain, everything, masked = edit(
        tiny_backbone,
        samples,
        inverted,
        [
            MasaCtrlParams(start_step=0, start_layer=0),
            MasaCtrlParams(start_step=0, start_layer=0, mask=True, mask_threshold=0.0),
            MasaCtrlParams(start_step=0, start_layer=0, mask=True, mask_source_tokens=(4,), mask_target_tokens=(4,)),
        ],
        generators,
    )
    assert torch.allclose(everything, plain, atol=1e-5)
    assert (masked - plain).abs().mean() > 1e-3


def test_masked_edit_of_a_batch_is_each_sample_alone(tiny_backbone, generated_samples, generators, ddim_inverted):
    """Masks from params' tokens and from each sample's blended words, mixed with an unmasked point."""
    words = [("cat", "dog"), ("car", "bus")]
    samples = [
        Sample(
            s.id, s.image, source_prompt=s.source_prompt, target_prompt=s.source_prompt.replace(a, b),
            meta={"blended_words": [a, b]},
        )  # fmt: skip
        for s, (a, b) in zip(generated_samples[:2], words, strict=True)
    ]
    points = [
        MasaCtrlParams(start_step=1, start_layer=1, mask=True, mask_tokens="blended_words", mask_threshold=0.3),
        MasaCtrlParams(start_step=0, start_layer=0, mask=True, mask_source_tokens=(2, 3), mask_target_tokens=(2,)),
        MasaCtrlParams(start_step=0, start_layer=0),
    ]
    together = edit(tiny_backbone, samples, ddim_inverted(samples), points, generators)
    for b, sample in enumerate(samples):
        alone = edit(tiny_backbone, [sample], ddim_inverted([sample]), points, generators)
        for k in range(len(points)):
            assert torch.allclose(together[k][b : b + 1], alone[k], atol=1e-4)
