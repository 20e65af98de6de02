import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from editsweep.methods import layer_diffusion
from editsweep.methods.base import get_method_class
from editsweep.methods.layer_diffusion import LayerEditParams, LayerInvertParams, layered_loss

# Small step counts on the tiny backbone; the paper's values are the defaults (checked below).
SMALL = dict(
    text_steps=2, text_learning_rate=1e-2, finetune_steps=2, finetune_learning_rate=1e-3, sample_steps=3, mask_steps=2
)
POINTS = [LayerEditParams(), LayerEditParams(alpha=0.3, target_every=0, guidance=3.0)]


@pytest.fixture(scope="module")
def method():
    return get_method_class("layer_diffusion")()


def gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(7 + i) for i in range(n)]


def with_mask(sample, mask: np.ndarray):
    return dataclasses.replace(sample, meta={**sample.meta, "mask": mask})


def run(method, backbone, samples, **params):
    invert = LayerInvertParams(**{**SMALL, **params})
    state = method.invert(backbone, samples, invert, gens(len(samples)))
    return state, method.edit(backbone, state, samples, invert, POINTS, gens(len(samples)))


def snapshot(backbone) -> dict[str, torch.Tensor]:
    """Every weight of the UNet, the text encoder and the VAE, copied."""
    parts = {"unet": backbone.unet, "text_encoder": backbone.text_encoder, "vae": backbone.vae}
    return {f"{n}.{k}": v.detach().clone() for n, m in parts.items() for k, v in m.state_dict().items()}


def assert_bit_identical(backbone, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(backbone)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_defaults_are_the_papers():
    invert, edit = LayerInvertParams(), LayerEditParams()
    assert (invert.text_steps, invert.text_learning_rate) == (500, 1e-3)
    assert (invert.finetune_steps, invert.finetune_learning_rate) == (250, 2e-6)
    assert (invert.foreground_weight, invert.background_weight, edit.alpha) == (2.0, 1.0, 0.7)
    with pytest.raises(ValidationError, match="foreground_weight"):
        LayerInvertParams(foreground_weight=-1)


def test_layered_loss_is_lambda_times_the_masked_mean_of_each_region():
    """Object row: lambda_f times the mean squared error over the mask's cells and channels, blind to
    errors outside the mask; background row: lambda_b times the mean over the rest."""
    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1
    state = {
        "latents": torch.randn(1, 4, 4, 4),
        "background": torch.randn(1, 4, 4, 4),
        "foreground_mask": mask,
        "background_mask": 1 - mask,
    }
    loss = layered_loss(state, [0], LayerInvertParams(foreground_weight=2.0, background_weight=1.0))
    assert loss.is_object == [True, False]
    assert torch.equal(loss.latents[0], state["latents"][0]) and torch.equal(loss.latents[1], state["background"][0])
    error = torch.rand(2, 4, 4, 4)
    louder = error.clone()
    louder[0, :, 2:] += 100.0  # outside the object mask
    inside, outside = error[0, :, :2].mean(), error[1, :, 2:].mean()
    torch.testing.assert_close(loss.reduce(error), torch.stack([2.0 * inside, 1.0 * outside]))
    torch.testing.assert_close(loss.reduce(louder)[0], loss.reduce(error)[0])


def test_empty_mask_leaves_the_foreground_loss_out(tiny_backbone, generated_samples, method):
    """An all-background dataset mask: the layered loss has no object row at all (no UNet call, no
    noise drawn), e_o stays exactly its initial text embedding, and the whole group (optimisation,
    fine-tuning, sampling) gives images bit-identical (torch.equal) to foreground weight 0. With a
    non-empty mask the foreground weight does change e_o, so the comparison can fail."""
    empty = [with_mask(generated_samples[0], np.zeros((64, 64), dtype=bool))]
    state, images = run(method, tiny_backbone, empty, foreground_weight=2.0)
    loss = layered_loss(state, [0], LayerInvertParams(foreground_weight=2.0))
    assert loss.is_object == [False] and loss.images == [0]
    assert torch.equal(state["object_embedding"][0], tiny_backbone.encode_text([empty[0].target_prompt])[0].float())
    _, images_w0 = run(method, tiny_backbone, empty, foreground_weight=0.0)
    assert all(torch.equal(a, b) for a, b in zip(images, images_w0, strict=True))

    half = np.zeros((64, 64), dtype=bool)
    half[:, :32] = True
    masked = [with_mask(generated_samples[0], half)]
    tuned = method.invert(tiny_backbone, masked, LayerInvertParams(**{**SMALL, "foreground_weight": 2.0}), gens(1))
    untouched = method.invert(tiny_backbone, masked, LayerInvertParams(**{**SMALL, "foreground_weight": 0.0}), gens(1))
    assert not torch.equal(tuned["object_embedding"], untouched["object_embedding"])


def test_backbone_weights_are_bit_identical_after_a_group_and_after_a_failing_one(
    tiny_backbone, generated_samples, method, monkeypatch
):
    """Every state_dict tensor of the UNet, text encoder and VAE torch.equal, and the same `unet`
    object, after a group that fine-tunes (the fine-tuned copy really learned: its images differ
    from fine-tune steps 0), and after a group that raises inside the fine-tuned block."""
    samples = generated_samples[:1]
    unet, before = tiny_backbone.unet, snapshot(tiny_backbone)
    state, tuned = run(method, tiny_backbone, samples, finetune_learning_rate=1e-2)
    assert tiny_backbone.unet is unet
    assert_bit_identical(tiny_backbone, before)
    assert all(p.grad is None and not p.requires_grad for p in unet.parameters())
    invert = LayerInvertParams(**{**SMALL, "finetune_steps": 0})
    plain = method.edit(tiny_backbone, state, samples, invert, POINTS, gens(1))
    assert [t.shape for t in tuned] == [(1, 3, 64, 64)] * 2
    assert not torch.allclose(tuned[0], plain[0])

    def boom(*args, **kwargs):
        assert tiny_backbone.unet is not unet  # raised while the trainable copy is swapped in
        raise RuntimeError("boom")

    monkeypatch.setattr(layer_diffusion, "layered_sample", boom)
    invert = LayerInvertParams(**{**SMALL, "finetune_learning_rate": 1e-2})
    with pytest.raises(RuntimeError, match="boom"):
        method.edit(tiny_backbone, state, samples, invert, POINTS, gens(1))
    assert tiny_backbone.unet is unet
    assert_bit_identical(tiny_backbone, before)


def test_points_are_batched_and_independent_of_each_other(tiny_backbone, generated_samples, method):
    """Without fine-tuning every image and point share one sampling batch; a point's images do not
    depend on which other points share its call, nor an image's on its batch mates."""
    samples = generated_samples[:2]
    invert = LayerInvertParams(**{**SMALL, "finetune_steps": 0})
    state = method.invert(tiny_backbone, samples, invert, gens(2))
    both = method.edit(tiny_backbone, state, samples, invert, POINTS, gens(2))
    second = method.edit(tiny_backbone, state, samples, invert, POINTS[1:], gens(2))
    torch.testing.assert_close(both[1], second[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0], both[1])
    alone = method.invert(tiny_backbone, samples[1:], invert, gens(2)[1:])
    torch.testing.assert_close(alone["object_embedding"][0], state["object_embedding"][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone["background_embedding"][0], state["background_embedding"][1], atol=1e-5, rtol=1e-5)


def test_dataset_mask_and_reference_background_reach_the_state(tiny_backbone, generated_samples, method):
    """The dataset mask is used even though the provider (CLIPSeg from a missing folder) would fail;
    a reference background replaces the input as the background term's image, over the whole frame."""
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:40, 8:40] = True
    reference = Image.new("RGB", (80, 80), (20, 200, 30))
    samples = [
        with_mask(generated_samples[0], mask),
        dataclasses.replace(with_mask(generated_samples[1], mask), meta={"mask": mask, "background": reference}),
    ]
    invert = LayerInvertParams(text_steps=0, mask_provider="clipseg", segmentation_model="/nonexistent/clipseg")
    state = method.invert(tiny_backbone, samples, invert, gens(2))
    expected = torch.zeros(8, 8)
    expected[1:5, 1:5] = 1
    assert torch.equal(state["foreground_mask"], torch.stack([expected, expected]))
    assert torch.equal(state["background_mask"][0], 1 - expected)
    assert torch.equal(state["background_mask"][1], torch.ones(8, 8))
    assert torch.equal(state["background"][0], state["latents"][0])
    assert not torch.allclose(state["background"][1], state["latents"][1])


def test_bad_reference_background_is_a_clear_error(tiny_backbone, generated_samples, method):
    sample = dataclasses.replace(generated_samples[0], meta={"mask": np.ones((64, 64), bool), "background": "bg.png"})
    with pytest.raises(ValueError, match=r"meta\['background'\] must be a PIL image"):
        method.invert(tiny_backbone, [sample], LayerInvertParams(text_steps=0), gens(1))
