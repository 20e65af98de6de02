"""pix2pix-zero's editor on the tiny backbone: a zero edit direction edits nothing."""

import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.ddim import ddim_sample
from editsweep.diffusion.inputs import source_prompts
from editsweep.diffusion.null_text import NullTextParams
from editsweep.diffusion.pix2pix_zero import xa_guided_rows
from editsweep.methods.editors.pix2pix_zero import Pix2PixZeroEditor, Pix2PixZeroParams
from editsweep.methods.inversions.null_text import NullTextInversion


def test_target_equal_to_source_reproduces_the_reconstruction(tiny_backbone, generated_samples, generators, ddim_inverted):
    """Target = source gives a zero direction: with the source prompt as negative prompt the
    target rows predict the source's conditional noise at any scale, their cross-attention maps
    are the reference's (no guidance step), so the edit is DDIM's reconstruction at guidance 1."""
    samples = generated_samples[:1]
    inverted = ddim_inverted(samples)
    cond = tiny_backbone.encode_text(source_prompts(samples))
    reconstruction = tiny_backbone.decode(ddim_sample(tiny_backbone, inverted.start, inverted.schedule, cond))
    points = [Pix2PixZeroParams(xa_guidance=0.1), Pix2PixZeroParams(xa_guidance=2.0, sentences="words", templates=("a {}",))]
    same = [Sample(s.id, s.image, s.target_prompt, s.source_prompt, meta={"blended_words": ["cat", "cat"]}) for s in samples]
    edited = Pix2PixZeroEditor().edit(tiny_backbone, inverted, same, points, [5.0, 7.5], generators(1))
    for image in edited:
        assert torch.allclose(image, reconstruction, atol=1e-4)
    other = [Sample(s.id, s.image, s.source_prompt + " in the snow", s.source_prompt) for s in samples]
    (changed,) = Pix2PixZeroEditor().edit(tiny_backbone, inverted, other, points[:1], [5.0], generators(1))
    assert (changed - reconstruction).abs().mean() > 1e-3


def test_under_null_text_a_zero_direction_with_its_null_texts_is_the_source_row(tiny_backbone, generated_samples, generators):
    """With the inversion's unconditional embedding (`negative: inversion`) the target rows of an
    unchanged prompt follow the source rows, which retrace the input at Null-text's tuned scale."""
    samples = generated_samples[:1]
    inversion, params = NullTextInversion(), NullTextParams(steps=4, inner_steps=2)
    inverted = inversion.inverted(tiny_backbone, inversion.invert(tiny_backbone, samples, params, generators(1)), samples, params)
    cond = tiny_backbone.encode_text(source_prompts(samples))
    source, target = xa_guided_rows(
        tiny_backbone, inverted, cond, cond, torch.tensor([False]), torch.tensor([0.5]), torch.tensor([params.guidance])
    )
    assert torch.allclose(target, source, atol=1e-4)
