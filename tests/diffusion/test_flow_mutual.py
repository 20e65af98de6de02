"""MasaCtrl's mutual attention on an MMDiT (diffusion/flow_mutual.py): which rows, tokens, steps and
blocks take their source row's keys and values, on the tiny SD3 and FLUX backbones."""

from __future__ import annotations

import pytest
import torch

from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.flow_mutual import MutualKV, attention_blocks, mutual, mutual_kv


def test_mutual_replaces_the_active_targets_image_tokens_by_their_sources_in_each_half():
    n_source, points, tokens, text = 2, 2, 7, 3
    rows = 2 * (n_source + points * n_source)  # two guidance halves
    output = torch.randn(rows, tokens, 4)
    active = torch.tensor([True, False, True, True])  # targets point-major: (p0, s0), (p0, s1), (p1, s0), (p1, s1)
    out = mutual(output, n_source, active, text)
    for half in (0, 6):
        torch.testing.assert_close(out[half : half + 2], output[half : half + 2], rtol=0, atol=0)  # sources
        for t, is_active in enumerate(active.tolist()):
            row, source = half + 2 + t, half + t % n_source
            torch.testing.assert_close(out[row, :text], output[row, :text], rtol=0, atol=0)  # text tokens kept
            expected = output[source, text:] if is_active else output[row, text:]
            torch.testing.assert_close(out[row, text:], expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_hooks_act_from_the_start_step_and_block_only(family):
    """Rows [source; target]: the target's image keys are the source's from step 2 and block 1 on
    (recorded after the control's hooks), its text keys its own."""
    backbone = load_backbone(f"tiny-{family}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    text = backbone.encode_text(["a cat", "a dog"])
    blocks = attention_blocks(backbone)
    assert len(blocks) == 2  # tiny-sd3: 2 joint blocks; tiny-flux: 1 double-stream, 1 single-stream
    control = MutualKV(1, torch.tensor([2]), torch.tensor([1]), text_tokens=text.embeds.shape[1])
    recorded: dict[int, torch.Tensor] = {}
    with mutual_kv(backbone, control):
        handles = [  # registered after the control's, so they see its output
            attn.to_k.register_forward_hook(lambda m, i, o, k=k: recorded.__setitem__(k, o))
            for k, (attn, _) in enumerate(blocks)
        ]
        try:
            for step in (1, 2):
                control.at(step, 0)
                backbone.predict_velocity(x, torch.tensor(0.5), text, torch.ones(2))
                for k, (_, joint) in enumerate(blocks):
                    first = text.embeds.shape[1] if joint else 0
                    assert torch.equal(recorded[k][1, first:], recorded[k][0, first:]) == (step >= 2 and k >= 1)
                    if joint:
                        assert not torch.equal(recorded[k][1, :first], recorded[k][0, :first])
        finally:
            for handle in handles:
                handle.remove()
