"""`cyclenet` (methods/cyclenet.py): scale 0 at eta 0 is SDEdit-style guided DDIM with the source
prompt as the negative one, batched points, per-sample noise, parameters, weights errors."""

from __future__ import annotations

import pytest
import torch

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.controlnet import ControlNetLoadError
from editsweep.diffusion.cyclenet import cyclenet_start
from editsweep.diffusion.ddim import ddim_sample, make_schedule
from editsweep.methods.base import METHODS, get_method_class
from editsweep.methods.cyclenet import CycleNetEditParams, CycleNetParams

TINY = CycleNetParams(cyclenet="tiny")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def method():
    return get_method_class("cyclenet")()


@pytest.fixture(scope="module")
def samples(generated_samples):
    return [Sample(s.id, s.image, "a snowy winter scene", s.source_prompt) for s in generated_samples[:2]]


def test_scale_0_at_eta_0_is_guided_ddim_from_the_noised_input(backbone, method, samples, generators):
    """Measured max pixel difference 0.0; control strength 1 then moves the image (mean 7.9e-3 here)."""
    state = method.invert(backbone, samples, TINY, generators(2))
    off = CycleNetEditParams(steps=8, strength=0.5, conditioning_scale=0.0, eta=0.0)
    (image,) = method.edit(backbone, state, samples, TINY, [off], generators(2))
    noised_at, count = cyclenet_start(8, 0.5)
    schedule = make_schedule(backbone, 8)
    noise = torch.stack([torch.randn(4, 8, 8, generator=g) for g in generators(2)])  # each sample's first draw
    a = schedule.alphas[noised_at].item()
    # contiguous as the method's batched copy (the VAE's latents of a channels-last image are channels-last,
    # and the UNet's convolutions round differently on them: ~7e-6 here)
    start = a**0.5 * state["latents"].contiguous() + (1 - a) ** 0.5 * noise
    target = backbone.encode_text([s.target_prompt for s in samples])
    source = backbone.encode_text([s.source_prompt for s in samples])
    plain = backbone.decode(ddim_sample(backbone, start, schedule, target, source, 9.0, start=noised_at + 1))
    assert (image - plain).abs().max().item() < 1e-6
    (on,) = method.edit(backbone, state, samples, TINY, [CycleNetEditParams(steps=8, eta=0.0)], generators(2))
    assert (on - plain).abs().mean().item() > 2e-3


def test_points_batched_equal_points_alone(backbone, method, samples, generators):
    state = method.invert(backbone, samples, TINY, generators(2))
    points = [
        CycleNetEditParams(steps=6, strength=0.5),
        CycleNetEditParams(steps=6, strength=0.5, guidance=3.0, conditioning_scale=0.5, eta=0.3),
        CycleNetEditParams(steps=4, strength=0.8),
    ]
    together = method.edit(backbone, state, samples, TINY, points, generators(2))
    assert [tuple(t.shape) for t in together] == [(2, 3, 64, 64)] * 3
    for point, batched in zip(points, together):
        (alone,) = method.edit(backbone, state, samples, TINY, [point], generators(2))
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    first_state = method.invert(backbone, samples[:1], TINY, generators(1))
    (first,) = method.edit(backbone, first_state, samples[:1], TINY, points[:1], generators(1))
    torch.testing.assert_close(first, together[0][:1], rtol=0, atol=1e-4)


def test_invert_encodes_the_input_as_the_release_and_keeps_it_as_the_condition(backbone, method, samples, generators):
    state = method.invert(backbone, samples, TINY, generators(2))
    assert state["condition"].shape == (2, 3, 64, 64) and 0 <= state["condition"].min() <= state["condition"].max() <= 1
    released = backbone.vae.encode(state["condition"] * 255 / 127 - 1).latent_dist.mean * 0.18215
    torch.testing.assert_close(state["latents"], released, rtol=0, atol=1e-5)


def test_params_defaults_and_checks(backbone, monkeypatch, tmp_path):
    assert "cyclenet" in METHODS
    e = CycleNetEditParams()
    assert (e.steps, e.strength, e.guidance, e.conditioning_scale, e.eta) == (100, 0.5, 9.0, 1.0, 1.0)
    cls = get_method_class("cyclenet")
    assert cls.model_sources(TINY) == {"cyclenet": "tiny:random"}
    with pytest.raises(ValueError, match="cyclenet"):
        CycleNetParams()
    with pytest.raises(ValueError, match="strength"):
        CycleNetEditParams(strength=0.05)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ControlNetLoadError, match="sled-umich/CycleNet, e.g. summer2winter.ckpt.*pickled LDM"):
        cls().invert(backbone, [], CycleNetParams(cyclenet="sled-umich/CycleNet"), [])


def spec(backbone: str) -> dict:
    return {
        "name": "cn",
        "backbone": {"name": backbone},
        "datasets": [{"name": "synthetic", "params": {"n": 1}}],
        "methods": [{"name": "cyclenet", "invert": {"cyclenet": "tiny"}}],
        "metrics": {},
    }


def test_instruction_backbones_are_refused_before_loading():
    with pytest.raises(SpecError, match="cyclenet cannot run on backbone 'tiny-ip2p' .*8 input channels"):
        load_spec(spec("tiny-ip2p"))
    load_spec(spec("tiny"))
