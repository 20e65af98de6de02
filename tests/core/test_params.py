"""core/params.py: parameters added after a method's release stay out of earlier task keys."""

from editsweep.core.params import KeepsTaskKeys, added_field


class _Point(KeepsTaskKeys):
    steps: int = 50
    dilation: int = added_field(0, ge=0)


def test_added_fields_are_dumped_only_when_set_and_round_trip():
    assert _Point().model_dump(mode="json") == {"steps": 50}
    assert _Point(dilation=0, steps=10).model_dump() == {"steps": 10}
    assert _Point(dilation=2).model_dump(mode="json") == {"steps": 50, "dilation": 2}
    assert _Point.model_validate(_Point(dilation=2).model_dump(mode="json")) == _Point(dilation=2)
    assert _Point(dilation=2).model_dump(include={"dilation"}) == {"dilation": 2}
