import torch

from editsweep.diffusion.mutual_attention import MutualControl, masked_attention, transformer_block_order


def test_blocks_are_counted_in_forward_order(tiny_backbone):
    order = transformer_block_order(tiny_backbone.unet)
    names = sorted(order, key=order.get)
    parts = [n.split(".")[0] for n in names]
    # down blocks first, then the mid block, then the up blocks, as the UNet runs them
    assert parts == sorted(parts, key=["down_blocks", "mid_block", "up_blocks"].index)
    assert sorted(order.values()) == list(range(len(order)))
    assert all(n.endswith("attn1.processor") for n in names)


def test_each_target_row_starts_at_its_own_step_and_layer():
    control = MutualControl(
        n_source=1,
        source_index=torch.tensor([0, 0]),
        start_step=torch.tensor([2, 0]),
        start_layer=torch.tensor([0, 5]),
    )
    control.step = 1
    assert control.active(6).tolist() == [False, True]
    control.step = 2
    assert control.active(3).tolist() == [True, False]


def test_masked_attention_keeps_foreground_and_background_apart():
    """A query inside the target mask reads only the source's foreground keys and values, one outside
    only its background: changing the other region's keys and values leaves it unchanged."""
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 2, 16, 8, generator=g) for _ in range(3))
    key_fg = torch.rand(2, 16, generator=g) > 0.5
    query_fg = torch.rand(2, 16, generator=g) > 0.5
    out = masked_attention(query, key, value, key_fg, query_fg)
    noise = torch.randn(2, 2, 16, 8, generator=g)
    bg_changed = masked_attention(query, key, value + noise * ~key_fg[:, None, :, None], key_fg, query_fg)
    fg_changed = masked_attention(query, key + noise * key_fg[:, None, :, None], value, key_fg, query_fg)
    inside = query_fg[:, None, :, None].expand_as(out)
    assert torch.equal(bg_changed[inside], out[inside]) and not torch.allclose(bg_changed[~inside], out[~inside])
    assert torch.equal(fg_changed[~inside], out[~inside]) and not torch.allclose(fg_changed[inside], out[inside])
    # row 0's first foreground query: plain attention over the foreground keys alone
    q = int(torch.nonzero(query_fg[0])[0])
    keys = key_fg[0]
    scores = query[0, :, q : q + 1] @ key[0, :, keys].transpose(-1, -2) / 8**0.5
    assert torch.allclose(out[0, :, q : q + 1], torch.softmax(scores, -1) @ value[0, :, keys], atol=1e-5)
