"""`edict` (methods/edict.py): the paper's editing is the pair (edict inversion, plain editor)."""

import torch

from editsweep.datasets.base import Sample
from editsweep.methods.base import get_method_class

INVERT = {"steps": 6, "strength": 0.7}


def run(name, invert, edits, samples, backbone, generators):
    cls = get_method_class(name)
    invert_params = cls.InvertParams.model_validate(invert)
    state = cls().invert(backbone, samples, invert_params, generators(len(samples)), seeds=[0] * len(samples))
    points = [cls.EditParams.model_validate(e) for e in edits]
    return cls().edit(backbone, state, samples, invert_params, points, generators(len(samples)))


def test_the_preset_is_its_pair_at_the_papers_guidance(tiny_backbone, generated_samples, generators):
    samples = [Sample(s.id, s.image, s.source_prompt, s.source_prompt + " in the snow") for s in generated_samples[:2]]
    cls = get_method_class("edict")
    assert cls.EditParams().guidance == 3.0 and cls.InvertParams().model_dump() == {
        "steps": 50, "strength": 0.8, "p": 0.93, "source_guidance": 3.0, "leapfrog": True,
    }  # fmt: skip
    preset = run("edict", INVERT, [{}, {"guidance": 5.0}], samples, tiny_backbone, generators)
    pair = run(
        "invert_edit", {"inversion": "edict", **INVERT},
        [{"editor": "plain", "guidance": 3.0}, {"editor": "plain", "guidance": 5.0}], samples, tiny_backbone, generators,
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(preset, pair, strict=True))
    assert (preset[0] - preset[1]).abs().mean() > 1e-3
