"""FLUX.1 Kontext (methods/flux_kontext.py) on the tiny FLUX backbone, against diffusers'
FluxKontextPipeline built from the same components."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import BackboneLoadError, family_of, load_backbone
from editsweep.diffusion.instructions import instruction
from editsweep.methods.base import Params, get_method_class
from editsweep.methods.flux_kontext import FluxKontextParams


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-flux")


@pytest.fixture(scope="module")
def method():
    return get_method_class("flux_kontext")()


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(64, 64, 3, generator=gen) * 255).byte().numpy()) for _ in range(2)]
    return [
        Sample("a", images[0], "a blue cube on a table", "a red cube on a table", {"editing_instruction": "make it blue"}),
        Sample("b", images[1], "a dog in the snow", "a cat in the snow"),
    ]


def pipeline_images(backbone, samples, point: FluxKontextParams, generators) -> torch.Tensor:
    """FluxKontextPipeline on the backbone's own components, at the input's 64 px (no auto-resize)."""
    pipe = FluxKontextPipeline(**backbone.pipe.components)
    negative = [point.negative_prompt] * len(samples) if point.true_cfg_scale > 1 else None
    return pipe(
        image=[s.image for s in samples],
        prompt=[instruction(s, point) for s in samples],
        negative_prompt=negative,
        true_cfg_scale=point.true_cfg_scale,
        guidance_scale=point.guidance,
        num_inference_steps=point.steps,
        generator=generators,
        height=64,
        width=64,
        max_area=64 * 64,
        _auto_resize=False,
        max_sequence_length=backbone.max_sequence_length,
        output_type="pt",
    ).images


@pytest.mark.parametrize("true_cfg", [1.0, 3.0])
def test_equals_the_flux_kontext_pipeline(backbone, method, samples, generators, true_cfg):
    """Same weights, instructions and per-sample generators (the pipeline draws the same noise from
    them): the same images to float tolerance (max difference ~5e-6), with and without true CFG."""
    point = FluxKontextParams(steps=3, guidance=2.5, true_cfg_scale=true_cfg, negative_prompt="blurry")
    state = method.invert(backbone, samples, Params(), generators(2))
    (ours,) = method.edit(backbone, state, samples, Params(), [point], generators(2))
    theirs = pipeline_images(backbone, samples, point, generators(2))
    assert ours.shape == theirs.shape == (2, 3, 64, 64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_the_velocity_reads_the_context_tokens(backbone):
    """Another context image, same noisy latents and prompt: another velocity (on the random tiny
    transformer the context moves it by ~1% of its size: 0.9% here, 1.8% against no context)."""
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, 16, 8, 8, generator=gen)
    text, g = backbone.encode_text(["a cat", "a dog"]), torch.ones(2)
    v = backbone.predict_velocity(x, 0.5, text, g, context=context)
    swapped = backbone.predict_velocity(x, 0.5, text, g, context=context.flip(0))
    assert (v - swapped).abs().mean() > 3e-3 * v.abs().mean()
    assert v.shape == x.shape


def test_points_together_equal_samples_and_points_alone(backbone, method, samples, generators):
    """2 samples x 2 points (one of them with true CFG) in one call equal each alone."""
    points = [FluxKontextParams(steps=3, guidance=4.0), FluxKontextParams(steps=3, true_cfg_scale=2.0)]
    state = method.invert(backbone, samples, Params(), generators(2))
    together = method.edit(backbone, state, samples, Params(), points, generators(2))
    for b in range(2):
        alone_state = method.invert(backbone, samples[b : b + 1], Params(), generators(2)[b : b + 1])
        for point, batched in zip(points, together):
            (alone,) = method.edit(backbone, alone_state, samples[b : b + 1], Params(), [point], generators(2)[b : b + 1])
            torch.testing.assert_close(batched[b : b + 1], alone, rtol=0, atol=1e-4)


def test_the_real_models_square_input_is_the_pipelines_preferred_resolution():
    """Inputs reach the method as squares at the backbone's resolution (1024 px for FLUX.1), which
    the pipeline's `_auto_resize` keeps as they are: generating at the input's size is the same."""
    _, width, height = min((abs(1.0 - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    assert (width, height) == (1024, 1024)


def test_non_square_input_is_a_clear_error(backbone, method, generators):
    sample = Sample("c", Image.new("RGB", (64, 48)), "a cat", "a dog")
    with pytest.raises(ValueError, match="flux_kontext: the input latent is 6 x 8; it must be square"):
        method.invert(backbone, [sample], Params(), generators(1))


def spec(backbone: str) -> dict:
    return {
        "name": "kontext",
        "backbone": {"name": backbone},
        "datasets": [{"name": "synthetic", "params": {"n": 1}}],
        "methods": [{"name": "flux_kontext"}],
        "metrics": {},
    }


@pytest.mark.parametrize("backbone", ["black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"])
def test_text_to_image_flux_weights_are_refused(backbone):
    with pytest.raises(SpecError, match=r"text-to-image FLUX.1 model .*black-forest-labs/FLUX.1-Kontext-dev"):
        load_spec(spec(backbone))


def test_other_families_are_refused_and_kontext_weights_accepted():
    assert family_of("black-forest-labs/FLUX.1-Kontext-dev") == "flux"  # known before loading
    with pytest.raises(SpecError, match="flux_kontext runs on backbone families flux, not 'sd'"):
        load_spec(spec("tiny"))
    for backbone in ("black-forest-labs/FLUX.1-Kontext-dev", "tiny-flux", "flux-arch"):
        load_spec(spec(backbone))


def test_the_kontext_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    hub_id = "black-forest-labs/FLUX.1-Kontext-dev"
    with pytest.raises(BackboneLoadError, match=rf"{hub_id}.*download {hub_id}"):
        load_backbone(hub_id)


def test_a_saved_kontext_pipeline_folder_loads_as_a_flux_backbone(backbone, tmp_path):
    """A FluxKontextPipeline folder (model_index.json names it) loads through the FLUX loader."""
    FluxKontextPipeline(**backbone.pipe.components).save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_backbone(str(tmp_path))
    assert loaded.family == "flux" and not loaded.random_weights
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    loaded.max_sequence_length = backbone.max_sequence_length
    text = backbone.encode_text(["a cat"])
    torch.testing.assert_close(
        loaded.predict_velocity(x, 0.5, text, torch.ones(1)), backbone.predict_velocity(x, 0.5, text, torch.ones(1))
    )
