"""lpfast: fast CPU kernels for compressing neural-network layers.

Robust (lp) low-rank factorization, projective clustering and doped Kronecker products,
implemented in C++/Eigen under a thin NumPy API. ``lpfast.reference`` holds a pure-NumPy
version of every kernel; ``lpfast.torch`` (optional, needs torch) holds autograd ops and
layers.
"""

from __future__ import annotations

from . import _core
from .kron import DopedKronecker, doped_kp_matmul
from .doped_lstm import DopedLSTMRuntime
from .kron_fit import doped_kp_fit, kron_factor_shapes, nearest_kronecker
from .hidden_prune import HiddenPrune, hidden_keep_count, prune_hidden_units
from .lewis import lewis_sample, lewis_weights
from .planner import Plan, plan_compression
from .projective import KSubspaces, k_subspaces
from .row_doped import RowDoped, row_doped_fit
from .usage import usage_weights
from .calibrated import LowRankSparse, calibration_error, lowrank_fit, lowrank_sparse_fit
from .calibrated_kron import doped_kp_fit_calibrated
from .subspace import LpSubspace, lp_subspace, subspace_cost

__version__ = "0.1.0"

__all__ = [
    "DopedKronecker",
    "DopedLSTMRuntime",
    "doped_kp_fit",
    "doped_kp_matmul",
    "get_num_threads",
    "has_openmp",
    "hidden_keep_count",
    "HiddenPrune",
    "lewis_sample",
    "lewis_weights",
    "k_subspaces",
    "kron_factor_shapes",
    "KSubspaces",
    "LpSubspace",
    "lp_subspace",
    "nearest_kronecker",
    "Plan",
    "plan_compression",
    "prune_hidden_units",
    "RowDoped",
    "row_doped_fit",
    "set_num_threads",
    "subspace_cost",
    "usage_weights",
    "LowRankSparse",
    "calibration_error",
    "doped_kp_fit_calibrated",
    "lowrank_fit",
    "lowrank_sparse_fit",
]


def has_openmp() -> bool:
    """Whether the compiled kernels were built with OpenMP (else they run on one thread)."""
    return bool(_core.has_openmp())


def get_num_threads() -> int:
    """Threads the parallel kernels use: ``set_num_threads(n)``, else ``OMP_NUM_THREADS``,
    else all cores (1 without OpenMP)."""
    return int(_core.get_num_threads())


def set_num_threads(n: int | None) -> None:
    """Set the thread count of all later calls, from any Python thread.

    ``None`` or ``0`` restores the default (``OMP_NUM_THREADS``, else all cores).
    """
    from ._validate import as_int

    _core.set_num_threads(0 if n is None else as_int(n, "n", low=0))
