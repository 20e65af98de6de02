"""InfEdit on the tiny backbone: DDCM's virtual inversion and unified attention control.

diffusers ships no InfEdit pipeline (nor a DDCM scheduler), so nothing here is compared with one;
the reference code's facts are checked instead.
"""

import torch

from editsweep.datasets.base import Sample
from editsweep.methods.infedit import InfEdit, InfEditParams, infedit_latents

STEPS = 4


def swapped(samples, words=(("cat", "dog"), ("car", "bus"), ("fruit", "bread"))):
    return [
        Sample(
            s.id, s.image, source_prompt=s.source_prompt, target_prompt=s.source_prompt.replace(a, b),
            meta={"blended_words": [a, b]},
        )
        for s, (a, b) in zip(samples, words, strict=False)
    ]  # fmt: skip


def test_target_equal_to_source_lands_on_the_source_latent(tiny_backbone, generated_samples, generators):
    """With the source prompt as target and the source's guidance, every branch's predicted clean
    latent is the input's at every step: the output is the encoded input to 1e-5 (measured: 0 exactly),
    whatever the UNet predicts, with every control on; another guidance moves it."""
    samples = [
        Sample(s.id, s.image, source_prompt=p, target_prompt=p, meta={"blended_words": [w, w]})
        for s, p, w in zip(generated_samples[:2], [s.source_prompt for s in generated_samples], ["cat", "car"])
    ]
    clean = InfEdit().invert(tiny_backbone, samples, None, generators(2))["latents"]
    same = InfEditParams(steps=STEPS, guidance=2.0, source_guidance=2.0, blend_threshold=0.3)
    other = InfEditParams(steps=STEPS, guidance=5.0, source_guidance=2.0, blend_threshold=0.3)
    out = infedit_latents(tiny_backbone, samples, [same, other], clean, generators(2))
    assert torch.allclose(out[:2], clean, atol=1e-5)
    assert (out[2:] - clean).abs().mean() > 1e-2


def test_edit_of_a_batch_is_each_sample_alone_and_the_controls_act(tiny_backbone, generated_samples, generators):
    samples = swapped(generated_samples[:2])
    method = InfEdit()
    points = [
        InfEditParams(steps=STEPS, blend_threshold=0.3),
        InfEditParams(steps=STEPS, guidance=4.0, cross_replace=0.0, self_replace=0.0, local_blend=False),
    ]
    state = method.invert(tiny_backbone, samples, None, generators(2))
    together = method.edit(tiny_backbone, state, samples, None, points, generators(2))
    for b, sample in enumerate(samples):
        one = {"latents": state["latents"][b : b + 1]}
        alone = method.edit(tiny_backbone, one, [sample], None, points, generators(1, b))
        for k in range(len(points)):
            assert torch.allclose(together[k][b : b + 1], alone[k], atol=1e-4)
    assert [t.shape for t in together] == [(2, 3, 64, 64)] * 2
    assert (together[0] - together[1]).abs().mean() > 1e-3
