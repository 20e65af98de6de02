"""Editing methods, each one registered module (importing this package registers them)."""

from editsweep.methods import copy_input, ddim_edit, sdedit  # noqa: F401  (registration side effect)
from editsweep.methods.base import METHODS, Method, Params, State, get_method_class, register_method

__all__ = ["METHODS", "Method", "Params", "State", "get_method_class", "register_method"]
