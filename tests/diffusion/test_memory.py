"""Memory options (diffusion/memory.py): diffusers' mechanisms are in place, results agree with the
plain backbone to float tolerance, methods with their own attention processors give slicing back,
and families without slicing are refused."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.ddim import ddim_sample, make_schedule
from editsweep.diffusion.flow import flow_sample
from editsweep.diffusion.memory import MemoryOptions, apply_memory_options, memory_refusal, text_encoders
from editsweep.methods.base import get_method_class

PROMPTS = ["a photo of a cat", "a red car on a road"]


def sample_tiny(backbone, steps: int = 6) -> torch.Tensor:
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond, uncond = backbone.encode_text(PROMPTS), backbone.encode_text([""] * 2)
    return ddim_sample(backbone, noise, make_schedule(backbone, steps), cond, uncond, 7.5).float()


def sample_flow(backbone, steps: int = 4) -> torch.Tensor:
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    return flow_sample(backbone, noise, backbone.sigmas(steps), backbone.encode_text(PROMPTS), torch.full((2,), 3.5))


def sliced(slice_size="auto"):
    backbone = load_backbone("tiny")
    apply_memory_options(backbone, MemoryOptions(attention_slicing=slice_size))
    return backbone


@pytest.mark.parametrize("slice_size", ["auto", "max", 2])
def test_attention_slicing_is_diffusers_and_sampling_agrees(tiny_backbone, slice_size):
    backbone = sliced(slice_size)
    processors = backbone.unet.attn_processors.values()
    assert all(isinstance(p, SlicedAttnProcessor) for p in processors)
    expected = {"auto": 4, "max": 1, 2: 2}[slice_size]  # the tiny UNet has 8 heads per layer
    assert {p.slice_size for p in processors} == {expected}
    plain = sample_tiny(tiny_backbone)
    assert (plain - torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))).abs().max() > 1e-2
    torch.testing.assert_close(sample_tiny(backbone), plain, rtol=1e-5, atol=1e-5)


def test_vae_slicing_and_text_encoder_offload_agree(tiny_backbone):
    backbone = load_backbone("tiny")
    apply_memory_options(backbone, MemoryOptions(offload_text_encoders=True, vae_slicing=True))
    assert backbone.vae.use_slicing and backbone.text_encoder.device.type == "cpu"
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    latents = backbone.encode_images(images)
    torch.testing.assert_close(latents, tiny_backbone.encode_images(images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.decode(latents), tiny_backbone.decode(latents), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sample_tiny(backbone), sample_tiny(tiny_backbone), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "encoders"), [("tiny", 1), ("tiny-sdxl", 2), ("tiny-flux", 2)])
def test_offloaded_prompts_are_encoded_on_the_cpu_and_land_on_the_device(name, encoders):
    """A `meta` device stands in for the GPU: the text encoders run on the CPU (real weights), and
    only the embeddings move to the backbone's device."""
    backbone = load_backbone(name)
    plain = backbone.encode_text(PROMPTS)
    apply_memory_options(backbone, MemoryOptions(offload_text_encoders=True, vae_slicing=True))
    assert len(text_encoders(backbone)) == encoders
    backbone.device = torch.device("meta")
    moved = backbone.encode_text(PROMPTS)
    tensors = [moved] if name != "tiny-flux" else [moved.embeds, moved.pooled]
    assert all(t.device.type == "meta" for t in tensors)
    expected = [plain] if name != "tiny-flux" else [plain.embeds, plain.pooled]
    assert [t.shape for t in tensors] == [t.shape for t in expected]


def test_flow_backbone_offload_and_vae_slicing_agree():
    plain = load_backbone("tiny-flux")
    backbone = load_backbone("tiny-flux")
    apply_memory_options(backbone, MemoryOptions(offload_text_encoders=True, vae_slicing=True))
    torch.testing.assert_close(sample_flow(backbone), sample_flow(plain), rtol=1e-5, atol=1e-5)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(backbone.decode(latents), plain.decode(latents), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-qwen-image"])
def test_attention_slicing_is_refused_for_transformers(name):
    options = MemoryOptions(attention_slicing="auto")
    family = name.removeprefix("tiny-")
    assert "no attention slicing" in memory_refusal(family, options)
    assert memory_refusal("sd", options) is None and memory_refusal(family, MemoryOptions(vae_slicing=True)) is None
    assert memory_refusal("sdxl", options) is None
    with pytest.raises(ValueError, match=r"no attention slicing for (Flux|SD3|QwenImage)Transformer2DModel"):
        apply_memory_options(load_backbone(name), options)


def test_a_slice_larger_than_the_heads_names_the_option():
    with pytest.raises(ValueError, match=r"attention_slicing 16: .*heads per slice"):
        sliced(16)


def run(name, invert, edit, samples, backbone, generators):
    cls = get_method_class(name)
    invert_params = cls.InvertParams.model_validate(invert)
    state = cls().invert(backbone, samples, invert_params, generators(len(samples)), seeds=[0] * len(samples))
    return cls().edit(backbone, state, samples, invert_params, [cls.EditParams.model_validate(edit)], generators(2))[0]


@pytest.mark.parametrize(
    ("name", "invert", "edit"),
    [
        ("ddim_p2p", {"steps": 4}, {"cross_replace": 0.8, "self_replace": 0.4}),
        ("invert_edit", {"inversion": "ddim", "steps": 4}, {"editor": "masactrl", "start_step": 1, "start_layer": 1}),
        ("invert_edit", {"inversion": "ddim", "steps": 4}, {"editor": "pnp", "feature_layer": 2, "attention_layer": 2}),
    ],
    ids=["p2p", "masactrl", "pnp"],
)
def test_methods_with_their_own_processors_agree_and_give_slicing_back(
    tiny_backbone, generated_samples, generators, name, invert, edit
):
    """P2P, MasaCtrl and Plug-and-Play replace the sliced processors while they run (MasaCtrl and PnP
    with SDPA in the layers they leave alone); the sliced ones are back afterwards. Edited pixels
    agree to 1e-4 (one 8-bit level is 4e-3): latents to ~1e-5, amplified by the decoder."""
    samples = [
        Sample(s.id, s.image, s.source_prompt, s.source_prompt + " in the snow") for s in generated_samples[:2]
    ]
    backbone = sliced()
    got = run(name, invert, edit, samples, backbone, generators)
    assert all(isinstance(p, SlicedAttnProcessor) for p in backbone.unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor2_0) for p in tiny_backbone.unet.attn_processors.values())
    torch.testing.assert_close(got, run(name, invert, edit, samples, tiny_backbone, generators), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("name", "max_error", "rms_error"), [("tiny", 0.02, 0.005), ("tiny-flux", 0.15, 0.04)])
def test_bfloat16_sampling_agrees_with_float32(tiny_backbone, name, max_error, rms_error):
    """bfloat16 (8 bits of mantissa, relative rounding 2**-9) on the CPU against float32, the same
    noise and prompts: 6 DDIM steps at guidance 7.5 (tiny), 4 Euler steps at guidance 3.5 (tiny-flux).
    Latent errors relative to the latents' std (measured: max 0.008 / rms 0.002 tiny, max 0.086 /
    rms 0.023 tiny-flux, whose T5 and MMDiT round more); decoded pixels within 0.1, mean 0.01 (a
    bfloat16 VAE alone differs by 0.04 at most on the same latents). The VAEs' `force_upcast` is
    not involved: diffusers honours it only in the SDXL pipelines, and only for float16."""
    half = load_backbone(name, dtype="bfloat16")
    if name == "tiny":
        full, sample = tiny_backbone, sample_tiny
    else:
        full, sample = load_backbone(name), sample_flow
    a, b = sample(half), sample(full)
    assert (half.unet if name == "tiny" else half.transformer).dtype == torch.bfloat16
    assert 0 < ((a - b).abs().max() / b.std()).item() < max_error
    assert ((a - b).pow(2).mean().sqrt() / b.std()).item() < rms_error
    pixels = (half.decode(a) - full.decode(b)).abs()
    assert pixels.max().item() < 0.1 and pixels.mean().item() < 0.01


def test_the_layout_is_what_the_diffusers_pipeline_gives():
    """diffusers' StableDiffusionPipeline.enable_attention_slicing on the same tiny parts sets the
    same processors and slice sizes per layer as ours (VAE slicing is the VAE's own
    `enable_slicing` in diffusers 0.42: the pipeline's `enable_vae_slicing` is gone)."""
    from diffusers import StableDiffusionPipeline

    ours, theirs = sliced("auto"), load_backbone("tiny")
    pipe = StableDiffusionPipeline(
        vae=theirs.vae, unet=theirs.unet, text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer,
        scheduler=theirs.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.enable_attention_slicing("auto")
    slices = {n: (type(p), p.slice_size) for n, p in theirs.unet.attn_processors.items()}
    assert slices == {n: (type(p), p.slice_size) for n, p in ours.unet.attn_processors.items()}
    assert {p.slice_size for p in ours.unet.attn_processors.values()} == {4}


def test_qwen_image_instructions_are_encoded_on_the_cpu_and_land_on_the_device():
    """Qwen-Image-Edit's Qwen2.5-VL reads the image with the instruction: offloaded, it runs on the
    CPU, and the embeddings and mask move to the backbone's device (a `meta` stand-in)."""
    from PIL import Image

    backbone = load_backbone("tiny-qwen-image")
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    plain, _ = backbone.encode_instructions(PROMPTS, images)
    apply_memory_options(backbone, MemoryOptions(offload_text_encoders=True, vae_slicing=True))
    assert len(text_encoders(backbone)) == 1 and backbone.pipe.vae.use_slicing
    backbone.device = torch.device("meta")
    moved, mask = backbone.encode_instructions(PROMPTS, images)
    assert moved.device.type == "meta" and moved.shape == plain.shape
    assert mask is None or mask.device.type == "meta"
