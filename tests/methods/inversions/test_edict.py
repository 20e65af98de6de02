"""EDICT inversion (methods/inversions/edict.py) under the editors of `invert_edit`."""

import pytest
import torch

from editsweep.bench.spec import SpecError, load_spec
from editsweep.diffusion.edict import EDICTParams
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.p2p import P2PParams, p2p_latents
from editsweep.methods.base import get_method_class
from editsweep.methods.inversions.edict import EDICTInversion

INVERT = {"steps": 6, "strength": 0.7}  # int(6 * 0.7) = 4 coupled steps inverted


def invert(backbone, samples, generators):
    inversion, params = EDICTInversion(), EDICTParams(**INVERT)
    state = inversion.invert(backbone, samples, params, generators(len(samples)))
    return inversion.inverted(backbone, state, samples, params)


def test_batch_equals_each_sample_alone(tiny_backbone, generated_samples, generators):
    batch = invert(tiny_backbone, generated_samples[:2], generators)
    assert batch.start.shape == (2, 8, 8, 8) and batch.schedule.steps == 4  # the pair, stacked on channels
    for i, sample in enumerate(generated_samples[:2]):
        alone = invert(tiny_backbone, [sample], generators)
        assert torch.allclose(alone.start, batch.start[i : i + 1], atol=1e-5)


def test_p2p_with_target_equal_to_source_reproduces_the_reconstruction(tiny_backbone, generated_samples, generators):
    """Source rows at the inversion's guidance return the input latent to float precision; a target
    row with the source prompt, at that guidance, under P2P's control on both calls of every step,
    returns it too."""
    backbone = tiny_backbone
    inverted = invert(backbone, generated_samples, generators)
    latents = backbone.encode_images(images_tensor(generated_samples, backbone.device))
    source, target = p2p_latents(
        backbone, generated_samples, [P2PParams()], inverted.start, inverted.schedule, inverted.uncond, 3.0,
        advance=inverted.advance, source_scale=inverted.source_guidance, sampler=inverted.sampler,
    )  # fmt: skip
    scale = latents.abs().max()
    assert (source - latents).abs().max() < 1e-5 * scale
    assert (target - latents).abs().max() < 1e-5 * scale


def test_every_editor_runs_on_it_and_reconstructs_an_unchanged_prompt(tiny_backbone, generated_samples, generators):
    """Through `invert_edit`, at the inversion's guidance, target prompt = source prompt: P2P,
    MasaCtrl (their control on both UNet calls of a step) and the plain editor give back the input's
    VAE round trip (measured 6e-6; DDIM + P2P: 0.28). PnP injects the source's unconditional-half
    features into both halves, so it reconstructs only with its injection off; on, it edits."""
    cls = get_method_class("invert_edit")
    samples = generated_samples[:2]
    invert_params = cls.InvertParams.model_validate({"inversion": "edict", **INVERT})
    pnp = {"editor": "pnp", "feature_layer": 1, "attention_layer": 1}
    points = [
        cls.EditParams.model_validate({"guidance": 3.0, **e})
        for e in [
            {"editor": "p2p"},
            {"editor": "masactrl", "start_step": 0, "start_layer": 0},
            {"editor": "plain"},
            {**pnp, "feature_threshold": 0.0, "attention_threshold": 0.0},
            pnp,
        ]
    ]
    method = cls()
    state = method.invert(tiny_backbone, samples, invert_params, generators(2), seeds=[0, 0])
    images = method.edit(tiny_backbone, state, samples, invert_params, points, generators(2))
    roundtrip = tiny_backbone.decode(tiny_backbone.encode_images(images_tensor(samples, tiny_backbone.device)))
    for point, image in zip(points[:4], images, strict=False):
        assert (image - roundtrip).abs().max() < 1e-4, point.editor
    assert (images[4] - roundtrip).abs().mean() > 1e-3


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"strength 0.1 of 6 steps inverts int\(6 \* 0.1\) = 0 steps"):
        EDICTParams(steps=6, strength=0.1)
    with pytest.raises(ValueError, match="greater than 0"):
        EDICTParams(p=0)

    def spec(invert):
        methods = [{"name": "invert_edit", "invert": invert, "edit": {"editor": "p2p"}}]
        return {"name": "e", "datasets": [{"name": "synthetic", "params": {"n": 1}}], "seeds": [0], "methods": methods}

    with pytest.raises(SpecError, match=r"methods\[0\]\.invert.*inversion 'edict'.*strength 0.1"):
        load_spec(spec({"inversion": "edict", "steps": 6, "strength": 0.1}))
    with pytest.raises(SpecError, match=r"inversion 'edict'.*mix.*its parameters: steps, strength, p, source_guidance"):
        load_spec(spec({"inversion": "edict", "mix": 0.9}))
