"""Every deprecated name of lpfast in one place, each kept for one release (internal).

An old name still works and emits one DeprecationWarning per process naming its
replacement. Targets are dotted strings imported on first use, so this module imports
nothing of lpfast: an old path never ties two modules into an import circle.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

# Old module -> {old name: the module that defines the name now}.
MOVED_NAMES: dict[str, dict[str, str]] = {
    # The fits were defined in kron.py first; kron_fit.py imports kron.py.
    "lpfast.kron": {n: "lpfast.kron_fit"
                    for n in ("doped_kp_fit", "nearest_kronecker", "kron_factor_shapes")},
    # torch/layers.py re-exported these before layers/ became a package.
    "lpfast.torch.layers": {n: "lpfast.torch"
                            for n in ("DensitySchedule", "DopedKroneckerLinear", "LowRankEmbedding",
                                      "LowRankLinear", "ProjectiveEmbedding", "SparsityAnnealer",
                                      "co_matrix_dropout")},
    "lpfast.torch.compress": {"Method": "lpfast.torch.compression._registry"},
}

# The public modules of the flat torch/ folder -> where each lives since it was grouped by job.
MOVED_MODULES: dict[str, str] = {
    **{f"lpfast.torch.{n}": f"lpfast.torch.layers.{n}"
       for n in ("annealing", "kron", "lowrank", "lowrank_sparse", "projective", "row_doped")},
    "lpfast.torch.calibrate": "lpfast.torch.calibration.calibrate",
    "lpfast.torch.calibrated": "lpfast.torch.compression.linear",
    **{f"lpfast.torch.{n}": f"lpfast.torch.compression.{n}"
       for n in ("compress", "frontier", "prune", "report")},
    "lpfast.torch.distill": "lpfast.torch.distillation.distill",
}

_warned: set[str] = set()


def _warn(old: str, new: str, stacklevel: int) -> None:
    if old not in _warned:
        _warned.add(old)
        warnings.warn(f"{old} is deprecated and goes in the next release; use {new}",
                      DeprecationWarning, stacklevel=stacklevel + 1)


def moved_name(module: str, name: str) -> Any:
    """The body of an old module's ``__getattr__``: the moved ``name``, with a warning."""
    new = MOVED_NAMES.get(module, {}).get(name)
    if new is None:
        msg = f"module {module!r} has no attribute {name!r}"
        raise AttributeError(msg)
    _warn(f"{module}.{name}", f"{new}.{name}", stacklevel=3)
    return getattr(importlib.import_module(new), name)


class _MovedModule(types.ModuleType):
    """Stands in ``sys.modules`` at an old module path (imports, pickles) for the new module."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Deprecated path of :mod:`{new}`.")
        self.__dict__["_new"] = new

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        old = self.__name__
        if name in MOVED_NAMES.get(old, {}):
            return moved_name(old, name)
        _warn(old, self._new, stacklevel=2)
        return getattr(importlib.import_module(self._new), name)


def install_moved_modules(package: str) -> None:
    """Put a stand-in at each old module path below ``package`` (called by its ``__init__``)."""
    for old, new in MOVED_MODULES.items():
        if old.rpartition(".")[0] == package:
            sys.modules.setdefault(old, _MovedModule(old, new))


def moved_module(package: str, name: str) -> types.ModuleType:
    """The body of a package's ``__getattr__``: the stand-in of a moved submodule."""
    old = f"{package}.{name}"
    if old not in MOVED_MODULES:
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)
    install_moved_modules(package)
    return sys.modules[old]
