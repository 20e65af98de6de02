"""FlowEdit (methods/flowedit.py) on the tiny SD3 and FLUX backbones."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.methods.base import Params, get_method_class
from editsweep.methods.flowedit import FlowEditParams


@pytest.fixture(scope="module", params=["sd3", "flux"])
def backbone(request):
    return load_backbone(f"tiny-{request.param}")


@pytest.fixture(scope="module")
def method():
    return get_method_class("flowedit")()


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(64, 64, 3, generator=gen) * 255).byte().numpy()) for _ in range(2)]
    return [
        Sample("a", images[0], "a red cube on a table", "a blue cube on a table"),
        Sample("b", images[1], "a cat in the snow", "a dog in the snow"),
    ]


def test_same_prompt_and_guidance_returns_the_input_up_to_the_vae_round_trip(backbone, method, samples, generators):
    same = [Sample(s.id, s.image, s.source_prompt, s.source_prompt) for s in samples]
    state = method.invert(backbone, same, Params(), generators(2))
    point = FlowEditParams(steps=6, n_max=4, src_guidance=3.0, tar_guidance=3.0)
    (out,) = method.edit(backbone, state, same, Params(), [point], generators(2))
    # V_tar - V_src = 0 up to rounding: z_tar = z_edit + z_src - x_src equals z_src only to ~1e-7.
    torch.testing.assert_close(out, backbone.decode(state["latents"]), rtol=0, atol=1e-4)


def test_edits_move_away_from_the_input_with_n_max(backbone, method, samples, generators):
    state = method.invert(backbone, samples, Params(), generators(2))
    points = [FlowEditParams(steps=6, n_max=n) for n in (1, 3, 6)]
    outputs = method.edit(backbone, state, samples, Params(), points, generators(2))
    reference = backbone.decode(state["latents"])
    distances = [(o - reference).abs().mean().item() for o in outputs]
    assert 0 < distances[0] < distances[2]


def test_points_together_equal_points_alone(backbone, method, samples, generators):
    state = method.invert(backbone, samples, Params(), generators(2))
    points = [FlowEditParams(steps=5, n_max=3, tar_guidance=g) for g in (2.0, 6.0)] + [
        FlowEditParams(steps=4, n_max=2, n_min=1, n_avg=2)
    ]
    together = method.edit(backbone, state, samples, Params(), points, generators(2))
    for point, batched in zip(points, together):
        (alone,) = method.edit(backbone, state, samples, Params(), [point], generators(2))
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    alone_state = method.invert(backbone, samples[:1], Params(), generators(1))
    (first,) = method.edit(backbone, alone_state, samples[:1], Params(), points[:1], generators(1))
    torch.testing.assert_close(first, together[0][:1], rtol=0, atol=1e-4)


def test_paper_defaults_per_family():
    assert FlowEditParams().resolved("sd3") == (50, 33, 3.5, 13.5)
    assert FlowEditParams().resolved("flux") == (28, 24, 1.5, 5.5)
    assert FlowEditParams(tar_guidance=0.0).resolved("flux")[3] == 0.0
    with pytest.raises(ValueError, match="n_min"):
        FlowEditParams(n_max=3, n_min=4)


def _spec(backbone: str, method: str) -> dict:
    return {
        "name": "fam",
        "backbone": {"name": backbone},
        "datasets": [{"name": "synthetic", "params": {"n": 1, "size": 64}}],
        "methods": [{"name": method}],
        "metrics": {},
    }


def test_families_are_checked_at_validation():
    with pytest.raises(SpecError, match=r"flowedit runs on backbone families sd3, flux, not 'sd'"):
        load_spec(_spec("tiny", "flowedit"))
    with pytest.raises(SpecError, match=r"sdedit runs on backbone families sd, sdxl, not 'flux'"):
        load_spec(_spec("black-forest-labs/FLUX.1-dev", "sdedit"))
    load_spec(_spec("tiny-sd3", "flowedit"))
    load_spec(_spec("someone/unknown", "sdedit"))  # unknown family: decided when loaded


def test_list_methods_shows_each_methods_families(capsys):
    from editsweep.bench.cli import main

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "flowedit: " in out and out.split("flowedit: ")[1].split("\n")[1] == "  families: sd3, flux"
    assert out.split("\nsdedit: ")[1].split("\n")[1] == "  families: sd, sdxl"


def test_baselines_run_on_every_family(backbone, samples, generators):
    for name in ("copy", "vae_roundtrip"):
        method = get_method_class(name)()
        assert backbone.family in method.families
        state = method.invert(backbone, samples, Params(), generators(2))
        (out,) = method.edit(backbone, state, samples, Params(), [Params()], generators(2))
        assert out.shape == (2, 3, 64, 64)


def test_one_step_is_the_papers_update(backbone):
    """n_max=1: z_edit = x_src + (0 - sigma) (V(z_tar, target) - V(z_src, source)), z_src the input
    noised to sigma with the sample's generator, z_tar = z_src at the first step (Alg. 1)."""
    from editsweep.methods.flowedit import flowedit

    x_src = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    src, tar = backbone.encode_text(["a cat"]), backbone.encode_text(["a dog"])
    negative = backbone.encode_text([""]) if backbone.family == "sd3" else None
    g_src, g_tar = torch.tensor([2.0]), torch.tensor([5.0])
    sigmas = backbone.sigmas(4)
    out = flowedit(
        backbone, x_src, sigmas, (src, tar, negative), (g_src, g_tar), (1, 0, 1), [torch.Generator().manual_seed(7)]
    )
    sigma = sigmas[-2]
    noise = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(7))[None]
    z_src = (1 - sigma) * x_src + sigma * noise
    v_src = backbone.predict_velocity(z_src, sigma, src, g_src, negative)
    v_tar = backbone.predict_velocity(z_src, sigma, tar, g_tar, negative)
    torch.testing.assert_close(out, x_src - sigma * (v_tar - v_src), rtol=0, atol=1e-5)


def test_a_search_may_run_over_a_family_default_parameter():
    from editsweep.bench.adaptive import is_integer

    search = {"metric": "lpips", "target": 100.0, "tolerance": 5.0}
    spec = _spec("tiny-flux", "flowedit")
    spec["metrics"] = {"lpips": {"weights": "random"}}
    spec["allow_random_weights"] = True
    spec["methods"][0]["search"] = {**search, "param": "edit.n_max", "low": 2, "high": 24}
    assert is_integer(load_spec(spec), 0)
    spec["methods"][0]["search"] = {**search, "param": "edit.tar_guidance", "low": 1.5, "high": 9.5}
    assert not is_integer(load_spec(spec), 0)
    spec["methods"][0]["search"] = {**search, "param": "edit.n_max", "low": 2.5, "high": 24}
    with pytest.raises(SpecError, match="n_max is an integer"):
        load_spec(spec)
