"""CLIP guidance primitives: the spherical distance, the views, the loss's gradient, the models' loading."""

import pytest
import torch
import torch.nn.functional as F

from editsweep.diffusion.clip_guidance import (
    GuidanceModelError,
    augmentation_grids,
    clip_loss,
    load_guidance_clip,
    range_loss,
    spherical_distance,
)


def test_spherical_distance_is_the_papers_formula():
    a = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    angle = torch.arccos((a * b).sum(-1))
    # 2 arcsin(|a - b| / 2)^2 = angle^2 / 2 on the unit sphere
    torch.testing.assert_close(spherical_distance(a, b), angle**2 / 2, atol=1e-6, rtol=1e-5)
    assert spherical_distance(a, a).abs().max() < 1e-6


def test_view_0_is_the_image_and_the_others_depend_only_on_the_samples_generator():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    grids = augmentation_grids(5, 16, gens, torch.device("cpu"))
    assert grids.shape == (2, 5, 16, 16, 2)
    image = torch.rand(1, 3, 16, 16)
    same = F.grid_sample(image, grids[:1, 0], align_corners=True, padding_mode="border")
    torch.testing.assert_close(same, image, atol=1e-6, rtol=0)
    assert (grids[:, 1:] - grids[:, :1]).abs().amax((2, 3, 4)).amax(1).min() > 0  # p = 0.7 twice: some view moves
    alone = augmentation_grids(5, 16, [torch.Generator().manual_seed(4)], torch.device("cpu"))
    assert torch.equal(alone[0], grids[1])
    assert augmentation_grids(1, 16, gens, torch.device("cpu")).shape == (2, 1, 16, 16, 2)


def test_the_clip_loss_has_a_gradient_that_lowers_it():
    clip = load_guidance_clip("ViT-B-16", "toy", "cpu")
    texts = clip.text_embeddings(["a large red circle in the center on a white background"])
    grids = augmentation_grids(4, clip.size, [torch.Generator().manual_seed(0)], torch.device("cpu"))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = clip_loss(clip, image, texts, grids)
    (grad,) = torch.autograd.grad(loss.sum(), image)
    with torch.no_grad():
        assert clip_loss(clip, image - 0.05 * grad / grad.abs().max(), texts, grids) < loss


def test_range_loss_is_zero_inside_the_range():
    assert range_loss(torch.rand(2, 3, 4, 4) * 2 - 1).abs().max() == 0
    torch.testing.assert_close(range_loss(torch.full((1, 3, 2, 2), 1.5)), torch.tensor([0.25]))


def test_missing_or_unsafe_weights_are_errors_naming_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(GuidanceModelError, match=r"ViT-B-16:openai.*clip_weights"):
        load_guidance_clip.__wrapped__("ViT-B-16", "pretrained", "cpu")
    pickle = tmp_path / "clip.bin"
    pickle.write_bytes(b"")
    with pytest.raises(GuidanceModelError, match="not safetensors"):
        load_guidance_clip.__wrapped__("ViT-B-16", str(pickle), "cpu")
    assert load_guidance_clip("ViT-B-16", "tiny", "cpu").source == "tiny:random"
