"""CLIP as a differentiable loss (diffusion/clip_guidance.py): loading, validation, the distances,
Blended Diffusion's views and loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from editsweep.diffusion.clip_guidance import (
    ClipGuideError,
    ClipParams,
    augmentation_grids,
    clip_loss,
    clip_source,
    cosine_distance,
    directional_distance,
    load_clip_guide,
    range_loss,
    spherical_distance,
)

CPU = torch.device("cpu")


def test_presets_load_small_models_once_and_keep_gradients():
    guide = load_clip_guide("random", "openai", CPU, "test")
    assert load_clip_guide("random", "openai", CPU, "test") is guide  # kept for the next groups
    assert guide.source == "tiny-clip:random" and guide.image_size == 32
    assert all(not p.requires_grad for p in guide.model.parameters())
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    emb = guide.image_embeddings(images)
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    emb.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert guide.image_tokens(images).shape[:2] == (2, 64)
    toy = load_clip_guide("toy", "openai", CPU, "test")
    assert toy.source == "toy:clip"
    assert not torch.allclose(toy.image_embeddings(images), guide.image_embeddings(images))  # trained weights


def test_distances():
    a, b = torch.eye(3)[:2], torch.eye(3)[1:]
    assert torch.allclose(cosine_distance(a, a), torch.zeros(2))
    assert torch.allclose(cosine_distance(a, b), torch.ones(2))
    src, txt_src = torch.zeros(1, 3), torch.zeros(1, 3)
    along, against = torch.tensor([[1.0, 0, 0]]), torch.tensor([[-1.0, 0, 0]])
    assert directional_distance(along, src, along, txt_src).item() == pytest.approx(0.0)
    assert directional_distance(against, src, along, txt_src).item() == pytest.approx(2.0)
    assert directional_distance(src, src, along, txt_src).item() == pytest.approx(1.0)  # no change: no direction


def test_sources_recorded_in_rows():
    assert clip_source("ViT-B-16", "openai") == "ViT-B-16:openai"
    assert clip_source("hf-hub:org/name", "openai") == "hf-hub:org/name"
    assert clip_source("/models/clip", "openai") == "local-dir:/models/clip"
    assert clip_source("random", "openai").endswith(":random")


def test_missing_clip_weights_offline_name_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipGuideError, match=r"text2live \(CLIP\) weights for open_clip ViT-B-32:openai.*hf download"):
        load_clip_guide("ViT-B-32", "openai", CPU, "text2live")
    with pytest.raises(ClipGuideError, match="unknown clip 'no-such-clip'"):
        load_clip_guide("no-such-clip", "openai", CPU, "text2live")
    not_cached = r"hf-hub:org/clip-model is not in the HF cache.*hf download org/clip-model"
    with pytest.raises(ClipGuideError, match=not_cached):
        load_clip_guide("hf-hub:org/clip-model", "openai", CPU, "text2live")


def test_a_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{}")
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ClipGuideError, match="no open_clip_model.safetensors"):
        load_clip_guide(str(tmp_path), "openai", CPU, "text2live")


@pytest.mark.parametrize(
    ("clip", "tag", "message"),
    [
        ("no-such-clip", "openai", "unknown clip 'no-such-clip'"),
        ("ViT-B-32", "no-such-tag", "clip_tag 'no-such-tag' is not a pretrained tag of ViT-B-32"),
        ("relative/folder/x", "openai", "unknown clip"),
        ("./clip", "openai", "absolute path"),
    ],
)
def test_a_bad_clip_is_refused_when_the_params_are_validated(clip, tag, message):
    with pytest.raises(ValidationError, match=message):
        ClipParams(clip=clip, clip_tag=tag)
    assert ClipParams(clip="hf-hub:timm/vit_base_patch32_clip_224.openai").clip.startswith("hf-hub:")


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
    clip = load_clip_guide("toy", "openai", torch.device("cpu"), "test")
    texts = clip.text_embeddings(["a large red circle in the center on a white background"])
    grids = augmentation_grids(4, clip.image_size, [torch.Generator().manual_seed(0)], torch.device("cpu"))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = clip_loss(clip, image, texts, grids)
    (grad,) = torch.autograd.grad(loss.sum(), image)
    with torch.no_grad():
        assert clip_loss(clip, image - 0.05 * grad / grad.abs().max(), texts, grids) < loss


def test_range_loss_is_zero_inside_the_range():
    assert range_loss(torch.rand(2, 3, 4, 4) * 2 - 1).abs().max() == 0
    torch.testing.assert_close(range_loss(torch.full((1, 3, 2, 2), 1.5)), torch.tensor([0.25]))
