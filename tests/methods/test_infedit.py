"""InfEdit on the tiny backbone: DDCM's virtual inversion and unified attention control.

diffusers ships no InfEdit pipeline (nor a DDCM scheduler), so nothing here is compared with one;
the reference code's facts are checked instead.
"""

import dataclasses

import pytest
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


# --- the reference's source ("mutual") blend: meta["mutual_words"], thresh_m ---


def test_mutual_words_absent_change_nothing_and_present_change_the_edit(tiny_backbone, generated_samples, generators):
    """Without meta['mutual_words'] (or with `mutual_blend: false`) the edit is what it was before
    the source blend (checked once bit for bit against that code: two shapes colour swaps, two
    points); with them it changes, and a batch gives what each sample gives alone. "cat" both mutual and target blend word exercises the
    reference's last blend towards the mutual branch (use_xm)."""
    base = swapped(generated_samples[:2])
    cat = Sample(
        "running", generated_samples[0].image, source_prompt="a photo of a cat",
        target_prompt="a photo of a running cat", meta={"blended_words": ["cat", "cat"]},
    )  # fmt: skip
    plain = [base[1], cat]
    mutual = [
        dataclasses.replace(base[1], meta={**base[1].meta, "mutual_words": ["a"]}),
        dataclasses.replace(cat, meta={**cat.meta, "mutual_words": ["cat"]}),
    ]
    method, points = InfEdit(), [InfEditParams(steps=STEPS, blend_threshold=0.3, mutual_threshold=0.3)]
    state = method.invert(tiny_backbone, plain, None, generators(2))
    (without,) = method.edit(tiny_backbone, state, plain, None, points, generators(2))
    off = [InfEditParams(steps=STEPS, blend_threshold=0.3, mutual_threshold=0.3, mutual_blend=False)]
    assert torch.equal(method.edit(tiny_backbone, state, mutual, None, off, generators(2))[0], without)
    (with_words,) = method.edit(tiny_backbone, state, mutual, None, points, generators(2))
    assert all((with_words[b] - without[b]).abs().max() > 1e-3 for b in range(2))
    (alone,) = method.edit(tiny_backbone, {"latents": state["latents"][1:]}, mutual[1:], None, points, generators(1, 1))
    torch.testing.assert_close(alone[0], with_words[1], atol=1e-4, rtol=0)


def test_mutual_words_must_be_in_both_prompts(tiny_backbone, generated_samples, generators):
    sample = swapped(generated_samples[:1])[0]
    bad = dataclasses.replace(sample, meta={**sample.meta, "mutual_words": ["dog"]})  # target only
    method = InfEdit()
    state = method.invert(tiny_backbone, [bad], None, generators(1))
    with pytest.raises(ValueError, match=r"'dog'.*both prompts"):
        method.edit(tiny_backbone, state, [bad], None, [InfEditParams(steps=2)], generators(1))
    lone = dataclasses.replace(sample, meta={**sample.meta, "mutual_words": "a"})
    with pytest.raises(ValueError, match=r"mutual_words'\] = \[word"):
        method.edit(tiny_backbone, state, [lone], None, [InfEditParams(steps=2)], generators(1))


def test_mutual_parameters_stay_out_of_the_task_key_at_their_defaults():
    assert not {"mutual_blend", "mutual_threshold"} & set(InfEditParams().model_dump(mode="json"))
    assert InfEditParams(mutual_threshold=0.4).model_dump(mode="json")["mutual_threshold"] == 0.4


def test_a_source_mask_over_everything_holds_the_target_at_the_source_branch(
    tiny_backbone, generated_samples, generators
):
    """mutual_threshold 0: the source maps' mask of a mutual word covers every latent cell, so after
    every step but the first the target row is the source branch's latent, and the edit keeps only
    the last step's prediction difference: measured, the latent MSE against the input is 1.6e-8,
    against 1.6e-4 without the blend, on these two swaps."""
    samples = [dataclasses.replace(s, meta={**s.meta, "mutual_words": ["a"]}) for s in swapped(generated_samples[:2])]
    method = InfEdit()
    state = method.invert(tiny_backbone, samples, None, generators(2))
    clean = state["latents"]
    everywhere = InfEditParams(steps=STEPS, local_blend=False, mutual_threshold=0.0)
    held = infedit_latents(tiny_backbone, samples, [everywhere], clean, generators(2))
    unblended = everywhere.model_copy(update={"mutual_blend": False})
    free = infedit_latents(tiny_backbone, samples, [unblended], clean, generators(2))
    assert ((held - clean) ** 2).mean() < 0.1 * ((free - clean) ** 2).mean()
