"""The Qwen-Image-Edit backbone (diffusion/qwen_image.py) against diffusers' QwenImageEditPipeline on
the tiny weights, its offline tokenizer, and how it loads."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

from editsweep.diffusion.backbone import BackboneLoadError, backbone_source, family_of, load_backbone
from editsweep.diffusion.qwen_image import (
    NEGATIVE_PROMPT,
    SPECIAL_TOKENS,
    TINY_RESOLUTION,
    QwenImageBackbone,
    _tiny_tokenizer_parts,
    tiny_tokenizer,
)


@pytest.fixture(scope="module")
def qwen() -> QwenImageBackbone:
    return load_backbone("tiny-qwen-image")


@pytest.fixture
def pipeline_at_tiny_area(monkeypatch, qwen):
    """The pipeline conditions on a fixed 1024 x 1024 area (the released model's resolution); for the
    tiny preset it must use the tiny one, as our backbone does (`resolution ** 2`)."""
    original = pipeline_qwenimage_edit.calculate_dimensions
    monkeypatch.setattr(
        pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: original(qwen.resolution**2, ratio)
    )
    return qwen.pipe


def _inputs(qwen: QwenImageBackbone, n: int):
    images = torch.nn.functional.interpolate(
        torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1)), size=64, mode="bicubic"
    ).clamp(0, 1)
    return qwen.condition_images(images), qwen.noise([torch.Generator().manual_seed(i) for i in range(n)], 64, 64)


def _ours(qwen, conditions, noise, prompts, scales, steps=3):
    text = qwen.encode_instructions(prompts, conditions)
    negative = qwen.encode_instructions([NEGATIVE_PROMPT] * len(prompts), conditions)
    latents = qwen.sample(
        noise, qwen.image_latents(conditions), text, negative, torch.tensor(scales), steps, (64, 64), (64, 64)
    )
    return qwen.decode_packed(latents, 64, 64)


def test_the_tiny_preset_loads_offline(qwen):
    assert qwen.family == family_of("tiny-qwen-image") == "qwen-image"
    assert qwen.random_weights and qwen.weights_source == "tiny-qwen-image:random"
    assert qwen.resolution == TINY_RESOLUTION and qwen.vae_scale_factor == 8
    assert backbone_source("tiny-qwen-image") == "preset"


def test_the_tiny_tokenizer_is_deterministic_with_the_templates_special_tokens(qwen):
    before = _tiny_tokenizer_parts()
    _tiny_tokenizer_parts.cache_clear()
    assert _tiny_tokenizer_parts() == before
    tokenizer = tiny_tokenizer()
    ids = tokenizer("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>").input_ids
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids if i < len(SPECIAL_TOKENS)] == [
        "<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
    ]
    # the template's system prefix, dropped from the embeddings, is counted with this tokenizer
    prefix = qwen.pipe.prompt_template_encode.split("<|vision_start|>")[0]
    assert qwen.pipe.prompt_template_encode_start_idx == len(tokenizer(prefix).input_ids)


def test_sampling_equals_the_diffusers_pipeline(qwen, pipeline_at_tiny_area):
    """Each row with its own true-CFG scale (4.0 guided, 1.0 not) equals a pipeline call with that
    scale, the same noise (`latents=`), instruction, image and negative prompt " "; and a batched
    pipeline call equals ours for a batch of two at one scale."""
    conditions, noise = _inputs(qwen, 2)
    prompts = ["turn the cat into a dog", "make it red"]
    ours = _ours(qwen, conditions, noise, prompts, [4.0, 1.0])
    for i, scale in enumerate((4.0, 1.0)):
        theirs = pipeline_at_tiny_area(
            image=[conditions[i]], prompt=[prompts[i]], negative_prompt=[NEGATIVE_PROMPT], true_cfg_scale=scale,
            num_inference_steps=3, height=64, width=64, latents=noise[i : i + 1], output_type="pt",
        ).images
        torch.testing.assert_close(ours[i : i + 1], theirs, rtol=0, atol=1e-5)
    batched = pipeline_at_tiny_area(
        image=conditions, prompt=prompts, negative_prompt=[NEGATIVE_PROMPT] * 2, true_cfg_scale=4.0,
        num_inference_steps=3, height=64, width=64, latents=noise, output_type="pt",
    ).images
    torch.testing.assert_close(_ours(qwen, conditions, noise, prompts, [4.0, 4.0]), batched, rtol=0, atol=1e-5)
    assert (ours[0] - ours[1]).abs().max() > 1e-2  # the rows differ: the check is not vacuous


def test_families_are_known_before_loading(tmp_path):
    assert family_of("Qwen/Qwen-Image-Edit") == "qwen-image"
    (tmp_path / "edit").mkdir()
    (tmp_path / "edit" / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPipeline"}))
    assert family_of(str(tmp_path / "edit")) == "qwen-image"
    (tmp_path / "plus").mkdir()  # Qwen-Image-Edit-2509's pipeline takes several images: not this family
    (tmp_path / "plus" / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPlusPipeline"}))
    assert family_of(str(tmp_path / "plus")) is None


def test_a_missing_hub_model_fails_fast_offline_with_how_to_download_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(BackboneLoadError, match=r"QwenImageEditPipeline: .*Qwen/Qwen-Image-Edit.*download Qwen/"):
        load_backbone("Qwen/Qwen-Image-Edit")


def test_a_saved_diffusers_folder_loads_through_the_pipeline_class(qwen, tmp_path):
    """The real loading path (safetensors, model_index.json's family), offline, on the tiny weights."""
    qwen.pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded = load_backbone(str(tmp_path / "model"))
    assert isinstance(loaded, QwenImageBackbone) and not loaded.random_weights
    assert loaded.weights_source == str(tmp_path / "model")
    conditions, _ = _inputs(qwen, 1)
    torch.testing.assert_close(loaded.image_latents(conditions), qwen.image_latents(conditions))
    assert loaded.pipe.tokenizer("make it red").input_ids == qwen.pipe.tokenizer("make it red").input_ids
    with pytest.raises(BackboneLoadError, match="transformer/, vae/, text_encoder/"):
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPipeline"}))
        load_backbone(str(tmp_path / "broken"))


def test_the_full_size_architecture_preset_matches_the_released_model():
    """Built on the meta device (no memory), in the dtype asked: Qwen-Image's 20.4 B MMDiT and
    Qwen2.5-VL-7B's 8.3 B parameters."""
    from editsweep.diffusion.qwen_image import _build_arch

    pipe = _build_arch(0, torch.device("meta"), torch.bfloat16)
    transformer = sum(p.numel() for p in pipe.transformer.parameters())
    encoder = sum(p.numel() for p in pipe.text_encoder.parameters())
    assert abs(transformer - 20.43e9) / 20.43e9 < 1e-2, transformer
    assert abs(encoder - 8.29e9) / 8.29e9 < 1e-2, encoder
    assert pipe.text_encoder.dtype == pipe.transformer.dtype == torch.bfloat16
    assert family_of("qwen-image-arch") == "qwen-image"


def test_encode_images_gives_the_pipelines_image_latents_unpacked(qwen):
    """`encode_images` / `decode` work on unpacked latents like the other families' (vae_roundtrip)."""
    import numpy as np

    conditions, _ = _inputs(qwen, 2)
    pixels = torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32) / 255 for c in conditions])).permute(0, 3, 1, 2)
    latents = qwen.encode_images(pixels)
    assert latents.shape == (2, 4, 8, 8)
    torch.testing.assert_close(qwen.pipe._pack_latents(latents, 2, 4, 8, 8), qwen.image_latents(conditions))
    assert qwen.decode(latents).shape == (2, 3, 64, 64)
