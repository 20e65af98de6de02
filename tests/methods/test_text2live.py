"""Text2Live (methods/text2live.py): the edit layer's compositing, training and CLIP loading."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from editsweep.datasets.shapes import ShapesDataset
from editsweep.diffusion.clip_guidance import load_clip_guide
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class
from editsweep.methods.text2live import (
    EditLayerGenerator,
    Text2LiveEditParams,
    Text2LiveParams,
    composite,
    train_edit_layers,
)

CPU = torch.device("cpu")
OPACITY_0_AND_1 = [Text2LiveEditParams(opacity=0.0), Text2LiveEditParams()]
SMALL = {"width": 8, "depth": 2, "crops": 2, "crop_scale": 0.8, "learning_rate": 1e-2}


class Device:
    """Text2Live uses only the backbone's device."""

    device = CPU


@pytest.fixture(scope="module")
def method():
    return get_method_class("text2live")()


@pytest.fixture(scope="module")
def colour_edits():
    dataset = ShapesDataset({"n": 2, "edit_types": ["color"]})
    return [dataset.load(i) for i in dataset.sample_ids()]


def test_zero_opacity_returns_the_input_exactly(method, colour_edits, generators):
    params = Text2LiveParams(clip="random", steps=1, **SMALL)
    state = method.invert(Device, colour_edits, params, generators(2))
    assert state["alpha"].shape == (2, 1, 32, 32) and state["colours"].shape == (2, 3, 32, 32)
    assert (state["alpha"] > 0).all()  # a layer that would change the image...
    zero, full = method.edit(Device, state, colour_edits, params, OPACITY_0_AND_1, generators(2))
    inputs = images_tensor(colour_edits, CPU)
    assert torch.equal(zero, inputs)  # ... and at opacity 0 the input, bit for bit
    assert not torch.allclose(full, inputs, atol=1e-3)
    assert torch.equal(composite(inputs, state["colours"], torch.zeros_like(state["alpha"])), inputs)


def test_training_lowers_the_loss_on_random_clip(colour_edits):
    guide = load_clip_guide("random", "openai", CPU, "test")
    image = images_tensor(colour_edits[:1], CPU).contiguous()
    sample = colour_edits[0]
    texts = guide.text_embeddings([sample.target_prompt, sample.source_prompt, "purple over a green screen"])
    losses: list[torch.Tensor] = []
    params = Text2LiveParams(clip="random", steps=15, **SMALL)
    train_edit_layers(guide, image, texts[None], params, [torch.Generator().manual_seed(0)], losses)
    assert len(losses) == 15 and losses[0].shape == (1,)
    assert sum(losses[-3:]) / 3 < losses[0]


def test_a_colour_edit_moves_the_toy_clip_score_towards_the_target(method, colour_edits, generators):
    """Measured: toy CLIP-T of the composite 0.25 -> 0.86 (yellow -> purple star) after 40 steps;
    20 steps here (about 4 s)."""
    sample = colour_edits[:1]
    params = Text2LiveParams(clip="toy", steps=20, **{**SMALL, "width": 16, "crops": 4})
    state = method.invert(Device, sample, params, generators(1))
    before, after = method.edit(Device, state, sample, params, OPACITY_0_AND_1, generators(1))
    guide = load_clip_guide("toy", "openai", CPU, "test")
    text = guide.text_embeddings([sample[0].target_prompt])
    with torch.no_grad():
        score_before, score_after = ((guide.image_embeddings(x) * text).sum() for x in (before, after))
    assert score_after > score_before + 0.2


def test_a_sample_trains_the_same_alone_and_in_a_batch(method, colour_edits, generators):
    params = Text2LiveParams(clip="random", steps=2, **SMALL)
    both = method.invert(Device, colour_edits, params, generators(2))
    alone = method.invert(Device, colour_edits[1:], params, generators(2)[1:])
    # Float-level: grouped and single convolutions sum in other orders, and Adam's normalised first
    # steps turn gradient differences of ~1e-7 into weight differences of up to ~lr * 1e-2.
    assert (both["alpha"][1:] - alone["alpha"]).abs().max() < 1e-3
    assert (both["colours"][1:] - alone["colours"]).abs().max() < 1e-3


def test_grouped_generators_equal_single_ones():
    torch.manual_seed(0)
    singles = [EditLayerGenerator(4, 3) for _ in range(3)]
    grouped = EditLayerGenerator.stacked(singles)
    images = torch.rand(3, 3, 20, 28)
    colours, alpha = grouped(images)
    for b, single in enumerate(singles):
        c, a = single(images[b : b + 1])
        assert torch.allclose(colours[b : b + 1], c, atol=1e-6) and torch.allclose(alpha[b : b + 1], a, atol=1e-6)


def test_params_defaults_and_checks():
    p = Text2LiveParams()
    assert (p.clip, p.learning_rate, p.lambda_structure, p.lambda_sparsity, p.gamma) == (
        "ViT-B-32", 2.5e-3, 2.0, 5e-2, 2.0
    )
    with pytest.raises(ValidationError, match="placeholder"):
        Text2LiveParams(screen_text="{object} over a green screen")
    with pytest.raises(ValidationError):
        Text2LiveEditParams(opacity=1.5)
    assert get_method_class("text2live").model_sources(Text2LiveParams(clip="random")) == {"clip": "tiny-clip:random"}
    assert get_method_class("text2live").model_sources(p) == {"clip": "ViT-B-32:openai"}


def test_listed_with_its_parameters(capsys):
    from editsweep.bench.cli import main

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "text2live:" in out and "lambda_structure=2.0" in out and "opacity=1.0" in out


def test_runs_on_every_backbone_family_unlike_the_diffusion_methods():
    """Text2Live uses no diffusion model, so a flow backbone is accepted where DiffusionCLIP is refused."""
    from editsweep.bench.spec import SpecError, load_spec

    def spec(method: str) -> dict:
        return {"name": "t", "backbone": {"name": "tiny-flux"}, "datasets": [{"name": "synthetic"}],
                "methods": [{"name": method, "invert": {"clip": "random"}}], "metrics": {"psnr": {}}}  # fmt: skip

    assert load_spec(spec("text2live")).methods[0].name == "text2live"
    with pytest.raises(SpecError, match="diffusion_clip runs on backbone families sd, not 'flux'"):
        load_spec(spec("diffusion_clip"))
