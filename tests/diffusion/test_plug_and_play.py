"""Plug-and-Play's decoder layer count, against the reference code's layers on SD 1.x."""

from diffusers import UNet2DConditionModel

from editsweep.diffusion.plug_and_play import decoder_layers


def test_decoder_layers_of_an_sd_shaped_unet_are_the_reference_codes():
    """SD 1.x's shape (tiny widths): 12 decoder layers, attention at 3-11; layer 4 is
    `up_blocks[1].resnets[1]` and attention from 4 on is the reference's `res_dict`
    {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}."""
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    layers = decoder_layers(unet)
    assert len(layers) == 12
    assert [k for k, layer in enumerate(layers) if layer.attention is not None] == list(range(3, 12))
    assert layers[4].resnet is unet.up_blocks[1].resnets[1]
    injected = {layer.attention for layer in layers[4:]}
    expected = {
        f"up_blocks.{res}.attentions.{block}.transformer_blocks.0.attn1.processor"
        for res, blocks in {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}.items()
        for block in blocks
    }
    assert injected == expected
    assert expected <= set(unet.attn_processors)


def test_decoder_layers_of_the_tiny_unet(tiny_backbone):
    layers = decoder_layers(tiny_backbone.unet)
    assert len(layers) == 4
    assert [k for k, layer in enumerate(layers) if layer.attention is not None] == [2, 3]
