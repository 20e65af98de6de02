"""Prompt-to-Prompt control on the tiny backbone: properties that fail if the control is wrong."""

import pytest
import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.ddim import ddim_sample, invert_source, make_schedule
from editsweep.diffusion.p2p import GuidedP2PParams, build_control, p2p_latents
from editsweep.diffusion.prompt_alignment import word_positions

STEPS = 6


@pytest.fixture(scope="module")
def edited_samples(generated_samples):
    """The generated images with a word-swap target prompt and blended words."""
    targets = ["a photo of a dog", "a blue car on a road", "a bowl of soup"]
    words = [["cat", "dog"], ["red", "blue"], ["fruit", "soup"]]
    return [
        Sample(s.id, s.image, t, s.source_prompt, meta={"blended_words": w})
        for s, t, w in zip(generated_samples, targets, words)
    ]


@pytest.fixture(scope="module")
def inverted(tiny_backbone, edited_samples):
    return invert_source(tiny_backbone, edited_samples, STEPS)


def run(backbone, samples, points, trajectory, scale=7.5, **kw):
    null = backbone.encode_text([""] * len(samples))
    return p2p_latents(backbone, samples, points, trajectory[-1], make_schedule(backbone, STEPS), null, scale, **kw)


def test_target_equal_to_source_reproduces_the_reconstruction(tiny_backbone, generated_samples):
    trajectory = invert_source(tiny_backbone, generated_samples, STEPS)
    source, target = run(
        tiny_backbone, generated_samples, [GuidedP2PParams(), GuidedP2PParams(cross_replace=0.3)], trajectory
    )
    assert torch.allclose(target, source.repeat(2, 1, 1, 1), atol=1e-5)


def test_no_injection_is_plain_ddim_editing(tiny_backbone, edited_samples, inverted):
    _, target = run(tiny_backbone, edited_samples, [GuidedP2PParams(cross_replace=0, self_replace=0)], inverted)
    cond = tiny_backbone.encode_text([s.target_prompt for s in edited_samples])
    null = tiny_backbone.encode_text([""] * 3)
    plain = ddim_sample(tiny_backbone, inverted[-1], make_schedule(tiny_backbone, STEPS), cond, null, 7.5)
    assert torch.allclose(target, plain, atol=1e-5)


def test_injection_pulls_the_edit_towards_the_source(tiny_backbone, edited_samples, inverted):
    points = [GuidedP2PParams(cross_replace=c, self_replace=c) for c in (0.0, 1.0)]
    source, target = run(tiny_backbone, edited_samples, points, inverted)
    free, injected = target.split(3)
    assert (injected - source).abs().mean() < (free - source).abs().mean()


def test_reweighting_by_one_changes_nothing(tiny_backbone, edited_samples, inverted):
    samples = [Sample(s.id, s.image, "a photo of a cat", s.source_prompt) for s in edited_samples]
    points = [GuidedP2PParams(), GuidedP2PParams(reweight={"photo": 1.0}), GuidedP2PParams(reweight={"photo": 4.0})]
    _, target = run(tiny_backbone, samples, points, inverted)
    plain, by_one, by_four = target.split(3)
    assert torch.equal(plain, by_one)
    assert not torch.allclose(plain, by_four, atol=1e-4)


def test_points_batched_equal_points_one_by_one(tiny_backbone, edited_samples, inverted):
    points = [GuidedP2PParams(cross_replace=c, self_replace=s) for c, s in ((0.2, 0.0), (0.8, 0.4), (1.0, 1.0))]
    _, together = run(tiny_backbone, edited_samples, points, inverted)
    for k, point in enumerate(points):
        _, alone = run(tiny_backbone, edited_samples, [point], inverted)
        assert torch.allclose(together[3 * k : 3 * k + 3], alone, atol=1e-5)


def test_samples_batched_equal_samples_one_by_one(tiny_backbone, edited_samples, inverted):
    points = [GuidedP2PParams(cross_replace=0.5, local_blend=True)]
    _, together = run(tiny_backbone, edited_samples, points, inverted)
    for i, sample in enumerate(edited_samples):
        _, alone = run(tiny_backbone, [sample], points, inverted[:, i : i + 1])
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_controlling_the_unconditional_branch_is_an_option(tiny_backbone, edited_samples, inverted):
    points = [GuidedP2PParams(), GuidedP2PParams(control_uncond=True)]
    _, target = run(tiny_backbone, edited_samples, points[:1], inverted)
    _, with_uncond = run(tiny_backbone, edited_samples, points[1:], inverted)
    assert not torch.allclose(target, with_uncond, atol=1e-4)


def test_bad_controls_name_the_problem(tiny_backbone, edited_samples):
    with pytest.raises(ValueError, match="'kitten' is not in the target prompt"):
        build_control(tiny_backbone, edited_samples, [GuidedP2PParams(reweight={"kitten": 2.0})], STEPS)
    bare = [Sample(s.id, s.image, s.target_prompt, s.source_prompt) for s in edited_samples]
    with pytest.raises(ValueError, match="blended_words"):
        build_control(tiny_backbone, bare, [GuidedP2PParams(local_blend=True)], STEPS)


def test_cross_replace_steps_follow_the_reference_count(tiny_backbone, edited_samples):
    """int(f * (steps + 1)) for cross-attention, int(f * steps) for self-attention."""
    points = [GuidedP2PParams(cross_replace=0.75, self_replace=0.75)]
    control = build_control(tiny_backbone, edited_samples[:1], points, 50)
    assert control.cross_steps[0].unique().tolist() == [38]  # int(0.75 * 51); int(0.75 * 50) would be 37
    assert control.self_steps.tolist() == [37]


def test_per_word_schedules_and_windows(tiny_backbone, edited_samples):
    sample = edited_samples[0]
    word = sample.target_prompt.split()[-1]
    point = GuidedP2PParams(cross_replace={"default_": 0.8, word: (0.2, 0.5)}, self_replace=(0.1, 0.3))
    control = build_control(tiny_backbone, [sample], [point], 50)
    positions = word_positions(tiny_backbone.tokenizer, sample.target_prompt, word)
    assert control.cross_from[0, positions].tolist() == [10] * len(positions)  # int(0.2 * 51)
    assert control.cross_steps[0, positions].tolist() == [25] * len(positions)  # int(0.5 * 51)
    others = [j for j in range(77) if j not in positions]
    assert control.cross_from[0, others].eq(0).all() and control.cross_steps[0, others].eq(40).all()
    assert (control.self_from.tolist(), control.self_steps.tolist()) == ([5], [15])
    with pytest.raises(ValueError, match="not in the target prompt"):
        build_control(tiny_backbone, [sample], [GuidedP2PParams(cross_replace={"zebra": 0.4})], 50)


def test_windows_must_be_ordered():
    with pytest.raises(ValueError, match="start <= end"):
        GuidedP2PParams(cross_replace=(0.6, 0.2))
    assert GuidedP2PParams(cross_replace=[0.2, 0.6]).cross_replace == (0.2, 0.6)
