"""diffusion/blending.py: Blended Latent Diffusion's mask shrinking schedule and its per-image
decoder tuning (the method's own tests are in tests/methods/test_blended_latent.py)."""

import pytest
import torch

from editsweep.diffusion.blending import mask_schedule, shrinking_masks, tune_decoder


def test_mask_schedule_shrinks_monotonically_in_the_references_intervals_and_ends_on_the_real_mask():
    """After step j the reference's mask (j + 1) // (steps // n + 1); the last step takes the real mask."""
    assert mask_schedule(50, 3) == [0] * 16 + [1] * 17 + [2] * 17
    assert mask_schedule(6, 1) == [0] * 6
    for steps in range(1, 30):
        for n in range(1, 8):
            order = mask_schedule(steps, n)
            assert len(order) == steps and order[-1] == n - 1
            assert all(a <= b for a, b in zip(order, order[1:])) and min(order) >= 0
    with pytest.raises(ValueError, match="n_masks >= 1"):
        mask_schedule(4, 0)


def test_shrinking_masks_are_the_references_square_dilations_then_the_mask():
    mask = torch.zeros(2, 9, 9)
    mask[0, 4, 4] = mask[1, 0, 0] = 1
    masks = shrinking_masks(mask, 2)
    assert masks.shape == (3, 2, 9, 9)
    assert masks[0, 0].sum() == 25 and masks[1, 0].sum() == 9 and torch.equal(masks[2], mask)
    assert masks[0, 1].sum() == 9 and masks[1, 1].sum() == 4  # zeros beyond the border
    assert torch.equal(shrinking_masks(mask, 0), mask[None])


def test_tuned_decoders_are_per_image_and_leave_the_vae_untouched(tiny_backbone):
    """Each image's decoder copy gets only its own image's gradient: a batch of two gives what each
    image gives alone (vmapped copies), and the backbone's VAE keeps its weights."""
    vae = tiny_backbone.vae
    before = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    latents, inputs = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    initial = tiny_backbone.decode(latents)
    mask = torch.zeros(2, 64, 64)
    mask[0, 16:40, 24:48] = 1
    mask[1, :32] = 1
    both = tune_decoder(vae, latents, initial, inputs, mask, steps=2)
    for b in range(2):
        alone = tune_decoder(vae, latents[b : b + 1], initial[b : b + 1], inputs[b : b + 1], mask[b : b + 1], steps=2)
        # batched (vmapped) and single passes round apart, through Adam's normalised first steps:
        # up to 6.4e-5 measured, while the two steps move the pixels by 0.09-0.10 on average
        torch.testing.assert_close(alone[0], both[b], atol=2e-4, rtol=0)
    assert (both - initial).abs().mean() > 0.05
    assert all(torch.equal(v, before[k]) for k, v in vae.decoder.state_dict().items())
