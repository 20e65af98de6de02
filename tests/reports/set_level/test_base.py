"""The set-level metric registry: SFID, CSFID, FID, KID in the summary's order, each knowing how to read it."""

from __future__ import annotations

from editsweep.core.metrics import MetricInfo
from editsweep.reports.aggregate import metric_info
from editsweep.reports.set_level import SET_METRICS, get_set_metric_class
from editsweep.reports.set_level.kid import Kid


def test_the_four_set_metrics_are_registered_in_column_order():
    assert list(SET_METRICS) == ["sfid", "csfid", "fid", "kid"]
    assert get_set_metric_class("kid") is Kid and Kid.extras == ("kid_std",)
    assert [name for name, cls in SET_METRICS.items() if cls.needs_targets] == ["csfid"]


def test_set_metrics_know_their_direction_and_display():
    assert metric_info("csfid") == MetricInfo("CSFID", False, "more realistic and on-class")
    for name, display in (("sfid", "SFID"), ("fid", "FID"), ("kid", "KID")):
        assert metric_info(name) == MetricInfo(display, False, "more realistic")
    assert metric_info("kid_std").display == "KID (std)"
