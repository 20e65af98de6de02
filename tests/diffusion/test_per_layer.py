"""Per-layer conditioning: equal per-layer states are the ordinary UNet call bit for bit, each layer
reads its own states, and the inserted token is the text encoder's own lookup when given its row."""

import pytest
import torch

from editsweep.diffusion.per_layer import (
    coarse_layers,
    cross_attention_layers,
    inserted_token,
    layer_depths,
    per_layer_conditioning,
)
from editsweep.methods.p_plus import token_ids


@pytest.fixture
def inputs(tiny_backbone):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    return x, torch.tensor(500), tiny_backbone.encode_text(["a photo of a cat", "a red car"])


def test_equal_states_in_every_layer_are_the_ordinary_unet_call_bit_for_bit(tiny_backbone, inputs):
    unet = tiny_backbone.unet
    x, t, emb = inputs
    before = unet.attn_processors
    plain = unet(x, t, encoder_hidden_states=emb).sample
    layers = len(cross_attention_layers(unet))
    with per_layer_conditioning(unet) as states:
        states.cond = emb[:, None].expand(-1, layers, -1, -1)
        ignored = torch.zeros_like(emb)  # the UNet's own argument is replaced in every cross-attention
        ours = unet(x, t, encoder_hidden_states=ignored).sample
        states.uncond = torch.zeros_like(states.cond)
        both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([ignored, ignored])).sample
    assert torch.equal(ours, plain)
    # a 4-row call rounds apart from 2-row calls (CPU convolutions), hence the tolerance
    torch.testing.assert_close(both[2:], plain, atol=1e-5, rtol=0)
    zero = unet(x, t, encoder_hidden_states=torch.zeros_like(emb)).sample
    torch.testing.assert_close(both[:2], zero, atol=1e-5, rtol=0)
    assert {type(p) for p in unet.attn_processors.values()} == {type(p) for p in before.values()}  # restored
    assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample, plain)


def test_each_layer_reads_its_own_states(tiny_backbone, inputs):
    unet = tiny_backbone.unet
    x, t, emb = inputs
    layers = len(cross_attention_layers(unet))
    other = tiny_backbone.encode_text(["a bowl of fruit"] * 2)
    outputs = []
    with per_layer_conditioning(unet) as states:
        for i in range(layers):
            cond = emb[:, None].repeat(1, layers, 1, 1)
            cond[:, i] = other
            states.cond = cond
            outputs.append(unet(x, t, encoder_hidden_states=emb).sample)
        states.cond = emb[:, None].expand(-1, layers, -1, -1)
        with pytest.raises(ValueError, match="does not fit"):
            unet(x[:1], t, encoder_hidden_states=emb[:1])
    plain = unet(x, t, encoder_hidden_states=emb).sample
    for out in outputs:
        assert (out - plain).abs().max() > 1e-6
    assert (outputs[0] - outputs[-1]).abs().max() > 1e-6


def test_layer_depths_and_the_coarse_half(tiny_backbone):
    unet = tiny_backbone.unet
    names = cross_attention_layers(unet)
    depths = dict(zip(names, layer_depths(unet), strict=True))
    assert [depths[n] for n in names if n.startswith("mid_block")] == [1]
    assert all(d == 0 for n, d in depths.items() if not n.startswith("mid_block"))
    assert [n for n, c in zip(names, coarse_layers(unet), strict=True) if c] == [
        n for n in names if n.startswith("mid_block")
    ]


def test_the_inserted_token_is_the_lookup_when_given_its_own_row(tiny_backbone):
    backbone = tiny_backbone
    prompts = ["a photo of a sks", "sks on a road"]
    token = backbone.tokenizer("sks", add_special_tokens=False).input_ids[0]
    ids = token_ids(backbone, prompts)
    plain = backbone.text_encoder(ids)[0]
    weight = backbone.text_encoder.get_input_embeddings().weight
    before = weight.clone()
    with inserted_token(backbone.text_encoder, token) as holder:
        holder.vectors = weight[token].expand(2, -1)
        same = backbone.text_encoder(ids)[0]
        holder.vectors = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(0))
        other = backbone.text_encoder(ids)[0]
    assert torch.equal(same, plain)
    # causal attention: the tokens before the placeholder do not see it
    position = (ids[0] == token).nonzero()[0, 0]
    assert torch.equal(other[0, :position], plain[0, :position])
    assert (other[0, position:] - plain[0, position:]).abs().max() > 1e-4
    assert torch.equal(weight, before) and torch.equal(backbone.text_encoder(ids)[0], plain)


def test_an_sd_shaped_unet_has_16_layers_and_its_16x16_and_8x8_ones_are_coarse():
    """SD 1.x's block layout (tiny widths): 6 down, 1 mid, 9 up cross-attention layers; the coarse half
    is down_blocks.2, the mid block and up_blocks.1 (16x16 and 8x8 at 512 px)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8,
        layers_per_block=2,
        norm_num_groups=4,
        attention_head_dim=2,
        sample_size=8,
    )
    names = cross_attention_layers(unet)
    assert len(names) == 16
    coarse = {n.split(".attentions")[0] for n, c in zip(names, coarse_layers(unet), strict=True) if c}
    assert coarse == {"down_blocks.2", "mid_block", "up_blocks.1"}
    assert sum(coarse_layers(unet)) == 6
