import pytest

from editsweep.bench.registry import Registry


def test_register_get_and_list():
    registry = Registry("widget")

    @registry.register
    class A:
        name = "a"

    assert registry["a"] is A and list(registry) == ["a"] and "a" in registry and len(registry) == 1
    with pytest.raises(KeyError, match="unknown widget 'b'; known widgets: a"):
        registry["b"]


def test_a_different_class_under_a_taken_name_is_refused():
    registry = Registry("widget")

    @registry.register
    class A:
        name = "a"

    class B:
        name = "a"

    with pytest.raises(ValueError, match="registered twice"):
        registry.register(B)
