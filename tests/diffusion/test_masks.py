import dataclasses

import numpy as np
import pytest
import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.masks import (
    CLIPSEG_MODEL,
    MaskError,
    attention_maps,
    attention_masks,
    clipseg_masks,
    dataset_mask,
    object_masks,
    object_word,
)


def latents_of(backbone, samples) -> torch.Tensor:
    return backbone.encode_images(images_tensor(samples, backbone.device)).float()


def test_object_word_order_meta_then_parameter_then_last_shared_content_word():
    sample = Sample(
        id="s", image=None, source_prompt="a photo of a red circle", target_prompt="A photo of a red square."
    )
    assert object_word(sample) == "red"  # "a", "photo", "of" are shared too, but are not objects
    assert object_word(sample, "circle") == "circle"
    sample.meta["object_word"] = "Disk"
    assert object_word(sample, "circle") == "disk"


def test_missing_object_word_is_a_clear_error():
    sample = Sample(id="ted-1", image=None, source_prompt=None, target_prompt="A photo of a sitting dog.")
    with pytest.raises(MaskError, match=r"ted-1.*object_word"):
        object_word(sample)


def test_dataset_mask_takes_precedence_over_the_provider(tiny_backbone, generated_samples):
    """Sample 0 carries a (96, 128) mask (wider than tall: center-cropped to 96x96 like the image,
    then nearest-resized to the 8x8 latent); the provider named is CLIPSeg from a folder that does
    not exist, so any call to it would raise. Sample 1 has no mask and gets the attention mask."""
    mask = np.zeros((96, 128), dtype=bool)
    mask[:, 16:64] = True  # the left half of the centre crop (columns 16..111)
    with_mask = dataclasses.replace(generated_samples[0], meta={"mask": mask})
    latents = latents_of(tiny_backbone, [with_mask])
    got = object_masks(tiny_backbone, [with_mask], latents, "clipseg", segmentation_model="/nonexistent/clipseg")
    expected = torch.zeros(8, 8)
    expected[:, :4] = 1
    assert torch.equal(got[0], expected)

    pair = [with_mask, generated_samples[1]]
    both = object_masks(tiny_backbone, pair, latents_of(tiny_backbone, pair), "attention", threshold=0.5, steps=2)
    alone = attention_masks(
        tiny_backbone, pair[1:], latents_of(tiny_backbone, pair[1:]), [object_word(pair[1])], 0.5, 2
    )
    assert torch.equal(both[0], expected)
    torch.testing.assert_close(both[1], alone[0])


def test_bad_dataset_mask_is_a_clear_error(generated_samples):
    sample = dataclasses.replace(generated_samples[0], meta={"mask": np.zeros((4, 4, 3))})
    with pytest.raises(MaskError, match=r"meta\['mask'\] must be a \(H, W\) boolean array"):
        dataset_mask(sample, (8, 8))


def test_attention_mask_is_the_thresholded_word_map(tiny_backbone, generated_samples):
    """The random tiny backbone's attention does not know where a cat is, so a constructed
    "object region" test cannot be meaningful here; instead: the map is min-max normalised (spans
    exactly [0, 1]), the mask is binary and equals map > threshold, a higher threshold gives a
    subset, threshold 1 gives an empty mask, the word chosen changes the map, and the UNet's own
    attention processors are back afterwards."""
    samples = generated_samples[:2]
    processors = {k: type(v) for k, v in tiny_backbone.unet.attn_processors.items()}
    latents = latents_of(tiny_backbone, samples)
    words = [object_word(s) for s in samples]
    maps = attention_maps(tiny_backbone, samples, latents, words, steps=2)
    assert maps.shape == (2, 8, 8)
    assert torch.equal(maps.flatten(1).amin(1), torch.zeros(2))
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    low = attention_masks(tiny_backbone, samples, latents, words, 0.3, 2)
    high = attention_masks(tiny_backbone, samples, latents, words, 0.7, 2)
    assert set(low.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(low, (maps > 0.3).float()) and torch.equal(high, (maps > 0.7).float())
    assert bool((high <= low).all()) and high.sum() < low.sum()
    assert attention_masks(tiny_backbone, samples, latents, words, 1.0, 2).sum() == 0
    other = attention_maps(tiny_backbone, samples, latents, ["photo", "car"], steps=2)
    assert not torch.allclose(other, maps)
    assert {k: type(v) for k, v in tiny_backbone.unet.attn_processors.items()} == processors


def test_attention_mask_needs_the_word_in_a_prompt(tiny_backbone, generated_samples):
    samples = generated_samples[:1]
    with pytest.raises(MaskError, match="'zebra' is in neither"):
        attention_maps(tiny_backbone, samples, latents_of(tiny_backbone, samples), ["zebra"], 1)


def test_offline_segmentation_model_error_names_the_model(generated_samples):
    images = images_tensor(generated_samples[:1], torch.device("cpu"))
    with pytest.raises(MaskError, match=f"{CLIPSEG_MODEL}.*huggingface-cli download"):
        clipseg_masks(images, ["cat"], (8, 8), 0.5, CLIPSEG_MODEL)


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory) -> str:
    """A CLIPSeg with seeded random weights, saved as a local folder (safetensors + processor files)."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    from editsweep.diffusion.backbone import clip_bpe_tokenizer

    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPSegConfig(
        text_config={**small, "max_position_embeddings": 77},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
        reduce_dim=16,
        extract_layers=[0, 1],
        decoder_num_attention_heads=4,
        decoder_intermediate_size=37,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clipseg")
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    image_processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    CLIPSegProcessor(image_processor=image_processor, tokenizer=clip_bpe_tokenizer()).save_pretrained(folder)
    return str(folder)


def test_clipseg_masks_from_a_local_folder(tiny_clipseg, generated_samples):
    """Loaded from a folder by path; binary masks at the requested size whose area shrinks as the
    threshold rises and which depend on the text prompt (the object word)."""
    images = images_tensor(generated_samples[:2], torch.device("cpu"))
    low = clipseg_masks(images, ["cat", "car"], (8, 8), 0.3, tiny_clipseg)
    high = clipseg_masks(images, ["cat", "car"], (8, 8), 0.7, tiny_clipseg)
    assert low.shape == (2, 8, 8) and set(low.unique().tolist()) <= {0.0, 1.0}
    assert bool((high <= low).all())
    assert clipseg_masks(images, ["cat", "car"], (8, 8), 1.0, tiny_clipseg).sum() == 0
    words = [clipseg_masks(images[:1], [w], (16, 16), 0.5, tiny_clipseg) for w in ("cat", "a red bicycle")]
    assert not torch.equal(*words)
