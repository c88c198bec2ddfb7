"""Deprecated names of the NumPy API (lpfast._compat): each warns once and works."""

from __future__ import annotations

import importlib

import pytest

from lpfast import _compat
from shared import deprecations

NUMPY_ALIASES = [(m, n) for m, names in _compat.MOVED_NAMES.items()
                 if not m.startswith("lpfast.torch") for n in names]


@pytest.mark.parametrize(("module", "name"), NUMPY_ALIASES)
def test_moved_name_warns_once_and_works(module, name):
    _compat._warned.discard(f"{module}.{name}")
    old = importlib.import_module(module)
    value, warned = deprecations(lambda: getattr(old, name))
    new = _compat.MOVED_NAMES[module][name]
    assert value is getattr(importlib.import_module(new), name)
    assert len(warned) == 1
    assert f"{module}.{name}" in str(warned[0].message) and new in str(warned[0].message)
    assert warned[0].filename == __file__


def test_unknown_name_is_still_an_attribute_error():
    import lpfast.kron

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lpfast.kron.nope  # noqa: B018
