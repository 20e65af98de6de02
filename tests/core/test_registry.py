import pytest

from editsweep.core.registry import Registry


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


def test_a_class_of_the_same_qualname_from_another_module_is_refused():
    # A plugin's `class DDIMEdit` registering `ddim_edit` used to replace the built-in silently.
    registry = Registry("widget")

    def make(module):
        return type("A", (), {"name": "a", "__module__": module})

    builtin = registry.register(make("editsweep.methods.builtin"))
    with pytest.raises(ValueError, match=r"'a' is registered twice.*editsweep\.methods\.builtin\.A.*plugin_x\.A"):
        registry.register(make("plugin_x"))
    assert registry["a"] is builtin


def test_re_executing_the_same_module_replaces_its_class():
    registry = Registry("widget")
    registry.register(type("A", (), {"name": "a", "__module__": "plugin_y"}))
    again = registry.register(type("A", (), {"name": "a", "__module__": "plugin_y"}))
    assert registry["a"] is again
