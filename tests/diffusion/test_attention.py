"""The P2P controller on hand-made attention maps: what it replaces, where, and when."""

import torch

from editsweep.diffusion.attention import SELF_MAX_TOKENS, LocalBlend, P2PControl
from editsweep.diffusion.p2p import _blend

L = 77


def control(n_targets=2, cross_steps=(3, 3), self_steps=(2, 2), **kw):
    return P2PControl(
        n_source=1,
        source_index=torch.zeros(n_targets, dtype=torch.long),
        mapper=torch.eye(L).repeat(n_targets, 1, 1),
        alphas=torch.ones(n_targets, L),
        equalizer=torch.ones(n_targets, L),
        cross_steps=torch.as_tensor(cross_steps),
        self_steps=torch.tensor(self_steps),
        **kw,
    )


def maps(rows, queries, keys, seed=0):
    return torch.rand(rows, 2, queries, keys, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def test_cross_maps_are_the_sources_inside_the_window_only():
    c = control(cross_steps=(3, 1))
    probs = maps(2 * 3, 16, L)  # [uncond; cond] halves of 3 rows: 1 source + 2 targets
    c.step = 2
    out = c(probs, is_cross=True)
    cond = out[3:]
    assert torch.equal(cond[1], cond[0])  # target 0: window of 3 steps, step 2 is inside
    assert torch.equal(cond[2], probs[5])  # target 1: window of 1 step is over
    assert torch.equal(out[:3], probs[:3])  # the unconditional half is left alone


def test_uncond_branch_is_controlled_on_request():
    c = control(control_uncond=True)
    probs = maps(6, 16, L)
    out = c(probs, is_cross=True)
    assert torch.equal(out[1], out[0]) and torch.equal(out[4], out[3])


def test_mapper_and_equalizer_rearrange_and_scale_tokens():
    c = control(n_targets=1, cross_steps=(5,), self_steps=(0,))
    swap = torch.eye(L)
    swap[[1, 2]] = swap[[2, 1]]
    c.mapper = swap[None]
    c.equalizer[0, 3] = 2.0
    probs = maps(2, 16, L)
    out = c(probs, is_cross=True)[1]
    expected = probs[0][..., swap.argmax(0)]
    expected[..., 3] *= 2
    assert torch.allclose(out, expected)


def test_self_attention_replaced_only_on_small_layers_and_early_steps():
    c = control(self_steps=(1, 1))
    small, large = maps(6, 64, 64), maps(6, SELF_MAX_TOKENS * 4, 8)
    assert torch.equal(c(small, is_cross=False)[4], small[3])
    assert torch.equal(c(large, is_cross=False), large)
    c.step = 1
    assert torch.equal(c(small, is_cross=False), small)


def test_local_blend_mask_covers_both_words_and_nothing_else():
    words_src, words_tgt = torch.zeros(1, L), torch.zeros(1, L)
    words_src[0, 5], words_tgt[0, 6] = 1, 1
    blend = LocalBlend(words_src, words_tgt, threshold=torch.tensor([0.5]), start_step=torch.tensor([0]))
    probs = torch.full((2, 2, 64, L), 1e-3)
    probs[0, :, 2 * 8 + 2, 5] = 1.0  # the source word looks at cell (2, 2)
    probs[1, :, 6 * 8 + 6, 6] = 1.0  # the target word looks at cell (6, 6)
    blend.collect(probs)
    mask = blend.mask(1, torch.tensor([0]), (8, 8))[0, 0]
    assert mask[1:4, 1:4].eq(1).all() and mask[5:8, 5:8].eq(1).all()  # 3x3 max-pool around each peak
    assert mask.sum() == 18 and mask[0, 7] == 0


def test_blending_keeps_source_latents_outside_the_mask():
    c = control(n_targets=1)
    words = torch.zeros(1, L)
    words[0, 5] = 1
    c.blend = LocalBlend(words, words, threshold=torch.tensor([0.5]), start_step=torch.tensor([0]))
    probs = torch.full((2, 2, 64, L), 1e-3)
    probs[:, :, 0, 5] = 1.0  # both words at cell (0, 0)
    c.blend.collect(probs)
    x = torch.randn(2, 4, 8, 8)
    out = _blend(x, c, (8, 8))
    assert torch.equal(out[1, :, :2, :2], x[1, :, :2, :2])  # inside the mask: the edit
    assert torch.equal(out[1, :, 4:, 4:], x[0, :, 4:, 4:])  # outside: the source
    assert torch.equal(out[0], x[0])


def test_per_token_windows_replace_only_the_active_tokens():
    """Per-word schedules (the reference's `cross_replace_steps` dict): each token has its own window."""
    start, end = torch.zeros(1, L, dtype=torch.long), torch.full((1, L), 5)
    start[0, 4], end[0, 4] = 2, 3  # token 4 is replaced in step 2 only
    c = control(n_targets=1, cross_steps=end, self_steps=(0,), cross_from=start)
    probs = maps(2, 16, L)
    c.step = 1
    out = c(probs, is_cross=True)[1]
    assert torch.equal(out[..., 4], probs[1][..., 4]) and torch.equal(out[..., 5], probs[0][..., 5])
    c.step = 2
    out = c(probs, is_cross=True)[1]
    assert torch.equal(out, probs[0])


def test_self_attention_window_starts_late():
    c = control(self_steps=(3, 3), self_from=torch.tensor([1, 2]))
    small = maps(6, 64, 64)
    c.step = 1
    out = c(small, is_cross=False)
    assert torch.equal(out[4], small[3]) and torch.equal(out[5], small[5])


def test_local_blend_mask_uses_the_maps_of_every_step_so_far():
    """As the reference's LocalBlend (a running sum in its attention store): a region the word
    attended to at an earlier step stays in the mask."""
    words = torch.zeros(1, L)
    words[0, 1] = 1
    blend = LocalBlend(words, words.clone(), threshold=torch.tensor([0.3]), start_step=torch.tensor([0]))
    for peak in ((1, 1), (6, 6)):
        probs = torch.full((2, 1, 64, L), 1e-3)
        probs[:, :, peak[0] * 8 + peak[1], 1] = 1.0
        blend.collect(probs)
    mask = blend.mask(1, torch.tensor([0]), (8, 8))[0, 0]
    assert mask[1, 1] == 1 and mask[6, 6] == 1
