"""Deprecated paths of lpfast.torch (lpfast._compat): the modules of the flat torch/ folder
and the names that moved; each warns once and works."""

from __future__ import annotations

import importlib
import pickle

import pytest
import torch

import lpfast.torch as lt
from lpfast import _compat
from shared import deprecations

TORCH_ALIASES = [(m, n) for m, names in _compat.MOVED_NAMES.items()
                 if m.startswith("lpfast.torch") for n in names]


@pytest.mark.parametrize(("module", "name"), TORCH_ALIASES)
def test_moved_name_warns_once_and_works(module, name):
    _compat._warned.discard(f"{module}.{name}")
    old = importlib.import_module(module)
    value, warned = deprecations(lambda: getattr(old, name))
    assert value is getattr(importlib.import_module(_compat.MOVED_NAMES[module][name]), name)
    assert len(warned) == 1 and f"{module}.{name}" in str(warned[0].message)
    assert warned[0].filename == __file__


@pytest.mark.parametrize(("old", "new"), sorted(_compat.MOVED_MODULES.items()))
def test_moved_module_warns_once_and_works(old, new):
    _compat._warned.discard(old)
    new_module = importlib.import_module(new)
    name = next(n for n in vars(new_module) if not n.startswith("_"))
    value, warned = deprecations(lambda: getattr(importlib.import_module(old), name))
    assert value is getattr(new_module, name)
    assert len(warned) == 1 and old in str(warned[0].message) and new in str(warned[0].message)
    assert warned[0].filename == __file__


def test_old_module_paths_as_statements():
    with pytest.warns(DeprecationWarning):
        _compat._warned.discard("lpfast.torch.kron")
        from lpfast.torch.kron import DopedKroneckerLinear
    assert DopedKroneckerLinear is lt.DopedKroneckerLinear
    # lpfast.torch.compress stays the function: the old module path does not replace it.
    from lpfast.torch.compress import METHODS  # noqa: F401
    assert callable(lt.compress) and lt.prune.prune_ffn is lt.prune_ffn


def test_pickled_class_path_of_the_flat_folder_loads():
    """A model pickled before the move names lpfast.torch.kron.DopedKroneckerLinear."""
    blob = pickle.dumps(lt.DopedKroneckerLinear, protocol=0)  # names stand as text lines
    old_blob = blob.replace(b"lpfast.torch.layers.kron", b"lpfast.torch.kron")
    assert old_blob != blob
    _compat._warned.discard("lpfast.torch.kron")
    with pytest.warns(DeprecationWarning, match="lpfast.torch.kron"):
        assert pickle.loads(old_blob) is lt.DopedKroneckerLinear


def test_public_import_paths_unchanged():
    assert len(lt.__all__) == len(set(lt.__all__)) == 33  # 30 + DopedLSTM, save/load_compressed
    for name in lt.__all__:
        assert getattr(lt, name).__module__.startswith("lpfast.torch.")
