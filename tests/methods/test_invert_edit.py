"""`invert_edit`: any inversion under any editor; the presets are its pairs (methods/pairs.py)."""

import json

import pytest
import torch

from editsweep.bench.plan import group_tasks, plan
from editsweep.bench.spec import SpecError, load_spec
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class

STEPS = 4
P2P_POINTS = [{"cross_replace": 0.8, "self_replace": 0.4}, {"cross_replace": 0.4, "self_replace": 0.2}]
PRESETS = [  # (preset, inversion, invert params, edit guidance of the preset's points)
    ("ddim_p2p", "ddim", {"steps": STEPS}, 5.0),
    ("negative_prompt", "negative_prompt", {"steps": STEPS}, 5.0),
    ("direct_inversion", "direct", {"steps": STEPS}, 5.0),
    ("null_text", "null_text", {"steps": STEPS, "inner_steps": 2, "guidance": 5.0}, None),
]


def run(name, invert, edits, samples, backbone, generators):
    cls = get_method_class(name)
    method = cls()
    invert_params = cls.InvertParams.model_validate(invert)
    points = [cls.EditParams.model_validate(e) for e in edits]
    state = method.invert(backbone, samples, invert_params, generators(len(samples)), seeds=[0] * len(samples))
    return method.edit(backbone, state, samples, invert_params, points, generators(len(samples)))


@pytest.mark.parametrize(("preset", "inversion", "invert", "guidance"), PRESETS, ids=[p[0] for p in PRESETS])
def test_each_preset_is_its_pair(tiny_backbone, generated_samples, generators, preset, inversion, invert, guidance):
    """The historical methods and `invert_edit` with their pair give the same images, bit for bit."""
    samples = [s.__class__(s.id, s.image, s.source_prompt, s.source_prompt + " in the snow") for s in generated_samples]
    preset_edits = [{**p, "guidance": guidance} if guidance is not None else p for p in P2P_POINTS]
    expected = run(preset, invert, preset_edits, samples, tiny_backbone, generators)
    pair_edits = [{"editor": "p2p", **p, **({"guidance": guidance} if guidance else {})} for p in P2P_POINTS]
    got = run("invert_edit", {"inversion": inversion, **invert}, pair_edits, samples, tiny_backbone, generators)
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_params_carry_the_components_defaults():
    cls = get_method_class("invert_edit")
    invert = cls.InvertParams.model_validate({"inversion": "null_text"}).model_dump(mode="json")
    assert invert["inversion"] == "null_text" and invert["inner_steps"] == 10 and invert["learning_rate"] == 0.01
    edit = cls.EditParams.model_validate({}).model_dump(mode="json")
    assert edit["editor"] == "p2p" and edit["guidance"] is None and edit["cross_replace"] == 0.8
    # What the worker reads back from the stored JSON is the same point.
    assert cls.InvertParams.model_validate(json.loads(json.dumps(invert))).model_dump(mode="json") == invert


def spec(invert, edit, seeds=(0, 1)):
    return load_spec(
        {
            "name": "pairs",
            "datasets": [{"name": "synthetic", "params": {"n": 3}}],
            "seeds": list(seeds),
            "methods": [{"name": "invert_edit", "invert": invert, "edit": edit}],
        }
    )


def test_one_inversion_per_inversion_sample_and_seed():
    tasks, _ = plan(spec({"inversion": ["ddim", "null_text", "direct"], "steps": 10}, {"editor": ["p2p", "masactrl", "pnp"]}))
    # 3 inversions x 3 samples x 2 seeds groups, each with the 3 editors' points.
    groups = group_tasks(tasks)
    assert len(tasks) == 3 * 3 * 2 * 3
    assert len(groups) == 3 * 3 * 2 and all(len(g.tasks) == 3 for g in groups)
    assert all({json.loads(t.edit_params)["editor"] for t in g.tasks} == {"p2p", "masactrl", "pnp"} for g in groups)
    per_inversion = {}
    for g in groups:
        per_inversion.setdefault(json.loads(g.head.invert_params)["inversion"], set()).add((g.head.sample_id, g.head.seed))
    assert {k: len(v) for k, v in per_inversion.items()} == {"ddim": 6, "null_text": 6, "direct": 6}


def test_a_parameter_of_one_inversion_only_is_refused_naming_it():
    with pytest.raises(SpecError, match=r"methods\[0\]\.invert.*inversion 'ddim': learning_rate.*its parameters: steps"):
        spec({"inversion": ["ddim", "null_text"], "learning_rate": 0.001}, {})


def test_unknown_components_are_refused_naming_the_known_ones():
    with pytest.raises(SpecError, match=r"unknown inversion 'edict2'.*ddim, ddpm, direct, edict, fireflow, flow, negative_prompt, null_text"):
        spec({"inversion": "edict2"}, {})
    with pytest.raises(SpecError, match=r"unknown editor 'p2q'.*p2p"):
        spec({}, {"editor": "p2q"})


def test_an_edit_guidance_against_null_texts_tuned_scale_is_refused():
    with pytest.raises(SpecError, match=r"edit guidance 5.0 differs from 7.5.*'null_text'.*invert params"):
        spec({"inversion": "null_text"}, {"guidance": [5.0, 7.5]})
    spec({"inversion": "null_text"}, {"guidance": 7.5})  # the same scale is fine
    spec({"inversion": ["ddim", "direct"]}, {"guidance": [5.0, 7.5]})  # they hold at any scale


def test_pix2pix_zero_on_an_inversion_whose_step_calls_the_denoiser_is_refused():
    """pix2pix-zero moves the latents between its UNet calls; EDICT's step makes the calls itself."""
    with pytest.raises(SpecError, match=r"editor 'pix2pix_zero' cannot run on inversion 'edict'.*one-call step"):
        spec({"inversion": ["ddim", "edict"]}, {"editor": "pix2pix_zero"})
    spec({"inversion": ["ddim", "edict"]}, {"editor": ["p2p", "masactrl", "pnp", "plain"]})


@pytest.mark.parametrize("editor", ["p2p", "masactrl"])
def test_ddpm_inversion_under_an_editor_with_target_equal_to_source_is_the_reconstruction(
    tiny_backbone, generated_samples, generators, editor
):
    """The source rows retrace the input through the noise maps; an unchanged prompt edits nothing."""
    invert = {"inversion": "ddpm", "steps": 6, "skip": 1, "source_guidance": 3.5}
    edit = {"editor": editor, "guidance": 3.5, **({"start_step": 0, "start_layer": 0} if editor == "masactrl" else {})}
    out = run("invert_edit", invert, [edit], generated_samples, tiny_backbone, generators)
    vae = tiny_backbone.decode(tiny_backbone.encode_images(images_tensor(generated_samples, tiny_backbone.device)))
    assert ((out[0] - vae) ** 2).mean() < 1e-3
