"""The flow inversions x flow editors of `invert_edit` (methods/inversions/flow.py, rf_solver.py,
fireflow.py; methods/editors/plain.py, value_sharing.py; diffusion/flow_inverted.py) on the tiny SD3
and FLUX backbones: the pairs are the flow methods, and pairs across families are refused."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from editsweep.bench.plan import group_tasks, plan
from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class


@pytest.fixture(scope="module", params=["sd3", "flux"])
def backbone(request):
    return load_backbone(f"tiny-{request.param}")


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(0)
    coarse = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=gen), size=64, mode="bicubic")
    images = [Image.fromarray((c.clamp(0, 1).permute(1, 2, 0) * 255).byte().numpy()) for c in coarse]
    return [Sample("a", images[0], "a blue cube", "a red cube"), Sample("b", images[1], "a dog", "a cat")]


def run(name, invert, edits, samples, backbone, generators):
    cls = get_method_class(name)
    method = cls()
    invert_params = cls.InvertParams.model_validate(invert)
    points = [cls.EditParams.model_validate(e) for e in edits]
    state = method.invert(backbone, samples, invert_params, generators(len(samples)), seeds=[0] * len(samples))
    return state, method.edit(backbone, state, samples, invert_params, points, generators(len(samples)))


def test_flow_plain_at_guidance_1_reconstructs_and_is_flow_inversion(backbone, samples, generators):
    same = [Sample(s.id, s.image, s.source_prompt, s.source_prompt) for s in samples]
    _, got = run("invert_edit", {"inversion": "flow", "steps": 12}, [{"editor": "plain", "guidance": 1.0}], same, backbone, generators)
    _, expected = run("flow_inversion", {"steps": 12}, [{"guidance": 1.0}], same, backbone, generators)
    assert torch.equal(got[0], expected[0])
    round_trip = backbone.decode(backbone.encode_images(images_tensor(same, backbone.device)))
    # measured: mean absolute pixel error 0.0078 (SD3), 0.0097 (FLUX) at 12 Euler steps (28 steps: 0.003-0.004,
    # tests/methods/test_flow_inversion.py)
    assert (got[0] - round_trip).abs().mean() < 0.015


def test_flow_plain_is_flow_inversion_at_the_default_guidance_and_a_strength(backbone, samples, generators):
    """Unset guidance is the family pipeline's (SD3 7.0 with CFG, FLUX 3.5), as `flow_inversion`'s."""
    invert = {"steps": 4, "strength": 0.5}
    _, got = run("invert_edit", {"inversion": "flow", **invert}, [{"editor": "plain"}], samples, backbone, generators)
    _, expected = run("flow_inversion", invert, [{}], samples, backbone, generators)
    assert torch.equal(got[0], expected[0])


@pytest.mark.parametrize("solver", ["rf_solver", "fireflow"])
def test_solver_inversion_under_its_editor_is_the_method(backbone, samples, generators, solver):
    """FLUX: the inversion + value_sharing is the method with its feature sharing (inject 3 / 1);
    SD3, where the methods share nothing: the inversion + plain is the method."""
    editor = "value_sharing" if backbone.family == "flux" else "plain"
    state, got = run("invert_edit", {"inversion": solver, "steps": 3}, [{"editor": editor}], samples, backbone, generators)
    _, expected = run(solver, {"steps": 3}, [{}], samples, backbone, generators)
    assert torch.equal(got[0], expected[0])
    inject = {"rf_solver": 3, "fireflow": 1}[solver]
    assert {k.split(".")[1] for k in state if k.startswith("value.")} == {str(i) for i in range(inject)}


def test_value_sharing_substitutes_the_saved_values_and_inject_0_is_plain(backbone, samples, generators):
    """On both families (SD3: the image tokens' values of its last joint block here) sharing changes
    the edit, one call batches points of different inject, and sharing 0 steps is plain sampling."""
    invert = {"inversion": "rf_solver", "steps": 3, "inject": 2}
    edits = [{"editor": "value_sharing", "guidance": 4.0}, {"editor": "value_sharing", "guidance": 4.0, "inject": 0},
             {"editor": "plain", "guidance": 4.0}, {"editor": "value_sharing", "guidance": 4.0, "inject": 1}]
    _, (shared, none, plain, one) = run("invert_edit", invert, edits, samples, backbone, generators)
    assert torch.equal(none, plain)
    effect = [(x - plain).abs().mean().item() for x in (shared, one)]
    # measured (mean absolute pixel change, 2 and 1 of 3 steps shared): SD3 2.4e-4, 5.2e-5 (one joint
    # block of tiny-sd3's 2 shares), FLUX 2.9e-4, 1.3e-4 (its one single-stream block); float noise
    # between batchings of the same computation is ~1e-6
    assert effect[0] > effect[1] > 2e-5
    _, (alone,) = run("invert_edit", invert, edits[3:], samples, backbone, generators)
    torch.testing.assert_close(one, alone, rtol=0, atol=1e-5)


def test_masactrl_mmdit_acts_from_its_start_step_and_a_late_start_is_plain(backbone, samples, generators):
    """Points of different starts share a loop; starting past the last step edits as `plain` does
    (the source rows beside the targets change nothing then)."""
    invert = {"inversion": "fireflow", "steps": 4}
    edits = [{"editor": "masactrl_mmdit", "guidance": 4.0, "start_step": 0, "start_layer": 0},
             {"editor": "masactrl_mmdit", "guidance": 4.0, "start_step": 100},
             {"editor": "plain", "guidance": 4.0}]
    _, (early, late, plain) = run("invert_edit", invert, edits, samples, backbone, generators)
    torch.testing.assert_close(late, plain, rtol=0, atol=1e-5)  # measured max 6e-6 (SD3), 5e-6 (FLUX): float noise
    # measured (mean absolute pixel change): SD3 2.7e-4, FLUX 1.5e-4 on these random tiny weights (max 3.7e-3, 2.3e-3)
    assert (early - plain).abs().mean() > 1e-5
    _, (alone,) = run("invert_edit", invert, edits[:1], samples, backbone, generators)
    torch.testing.assert_close(early, alone, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"masactrl_mmdit start_layer \[2\] is at or past the last of this transformer's 2"):
        run("invert_edit", invert, [{"editor": "masactrl_mmdit", "start_layer": 2}], samples, backbone, generators)


def spec(invert, edit, backbone="tiny-flux"):
    return load_spec(
        {
            "name": "flow-pairs",
            "backbone": {"name": backbone},
            "datasets": [{"name": "synthetic", "params": {"n": 2, "size": 64}}],
            "seeds": [0],
            "methods": [{"name": "invert_edit", "invert": invert, "edit": edit}],
        }
    )


def test_one_inversion_per_group_shared_by_every_editor_and_point():
    tasks, _ = plan(spec({"inversion": ["flow", "rf_solver"], "steps": 3, "inject": 1},
                         {"editor": ["plain", "value_sharing"], "guidance": [1.0, 3.5]}))
    groups = group_tasks(tasks)
    assert len(tasks) == 2 * 2 * 4 and len(groups) == 2 * 2
    assert all({json.loads(t.edit_params)["editor"] for t in g.tasks} == {"plain", "value_sharing"} for g in groups)


@pytest.mark.parametrize(
    ("invert", "edit", "backbone", "reason"),
    [
        ({"inversion": "flow"}, {"editor": "p2p"}, "tiny-flux",
         r"editor 'p2p' \(backbone families sd, sdxl\) cannot run on inversion 'flow' \(sd3, flux\): they share no backbone family"),
        ({"inversion": "ddim"}, {"editor": "value_sharing"}, "tiny",
         r"editor 'value_sharing' \(backbone families sd3, flux\) cannot run on inversion 'ddim'"),
        ({"inversion": "ddim"}, {"editor": "plain"}, "tiny-flux",
         r"backbone 'tiny-flux': inversion 'ddim' runs on backbone families sd, sdxl, not 'flux'"),
        ({"inversion": "flow"}, {"editor": "plain"}, "tiny",
         r"backbone 'tiny': inversion 'flow' runs on backbone families sd3, flux, not 'sd'"),
        ({"inversion": "null_text"}, {"editor": "masactrl_mmdit"}, "tiny",
         r"editor 'masactrl_mmdit' \(backbone families sd3, flux\) cannot run on inversion 'null_text'"),
        ({"inversion": "flow"}, {"editor": "value_sharing"}, "tiny-sd3",
         r"inversion 'flow': the inversion saved no attention values \(its inject is 0\): set invert inject"),
        ({"inversion": "fireflow"}, {"editor": "value_sharing", "inject": 2}, "tiny-flux",
         r"edit inject 2 exceeds the 1 editing steps whose values the inversion saved"),
    ],
    ids=["flow-p2p", "ddim-value_sharing", "null_text-masactrl_mmdit", "ddim-on-flux", "flow-on-sd", "nothing-saved", "more-than-saved"],
)
def test_pairs_that_cannot_run_are_refused_with_the_reason(invert, edit, backbone, reason):
    with pytest.raises(SpecError, match=reason):
        spec(invert, edit, backbone)


def test_pairs_of_a_family_validate_on_it():
    for backbone in ("tiny-flux", "tiny-sd3"):
        spec({"inversion": ["flow", "rf_solver", "fireflow"], "inject": 1}, {"editor": ["plain", "value_sharing", "masactrl_mmdit"]}, backbone)
    spec({"inversion": ["ddim", "direct"]}, {"editor": ["plain", "p2p"]}, "tiny")


def test_sd3_values_saved_under_guidance_meet_the_editings_guidance_rows(samples, generators):
    """Inverting SD3 at a guidance other than 1 saves [negative; text] values; points at different
    scales share one loop whose rows take the matching half, as each point alone does."""
    backbone = load_backbone("tiny-sd3")
    invert = {"inversion": "rf_solver", "steps": 3, "inject": 2, "inversion_guidance": 3.0}
    edits = [{"editor": "value_sharing", "guidance": 5.0}, {"editor": "value_sharing", "guidance": 2.0}]
    state, together = run("invert_edit", invert, edits, samples, backbone, generators)
    assert state["value.0.0.0"].shape[0] == 2 * len(samples)
    for edit, image in zip(edits, together, strict=True):
        _, (alone,) = run("invert_edit", invert, [edit], samples, backbone, generators)
        torch.testing.assert_close(image, alone, rtol=0, atol=1e-5)
