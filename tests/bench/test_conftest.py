"""The suite's own plumbing (tests/conftest.py, tests/bench/conftest.py): tests that start Ray share
one pytest-xdist group."""

from __future__ import annotations


def test_a_test_that_starts_ray_joins_the_ray_group(request, spawn_driver):
    """Requesting a Ray fixture (here `spawn_driver`, not called: nothing starts) marks the test; under
    README's `-n 2 --dist loadgroup` pytest-xdist must also have tagged its node id with the group,
    which it cannot under pytest 9 (pyproject.toml's pin)."""
    assert [m.args for m in request.node.iter_markers("xdist_group")] == [("ray",)]
    if getattr(request.config.option, "loadgroup", False):  # set in pytest-xdist workers only
        assert request.node.nodeid.endswith("@ray"), request.node.nodeid


def test_a_test_without_ray_stays_out_of_the_group(request):
    assert not list(request.node.iter_markers("xdist_group"))
