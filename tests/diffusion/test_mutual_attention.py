import torch

from editsweep.diffusion.mutual_attention import MutualControl, transformer_block_order


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
