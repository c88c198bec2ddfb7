"""torch integration: differentiable ops and compressed layers (CPU, no libtorch linking).

Needs ``pip install torch`` (any 2.4 <= version < 2.14; ``pip install "lpfast[torch]"``).
``import lpfast`` works without torch; only this subpackage needs it.
"""

from __future__ import annotations

from typing import Any

from .. import _compat

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where torch is missing
    msg = ("lpfast.torch needs PyTorch: install it with `pip install torch==2.13.0` "
           "(or `pip install \"lpfast[torch]\"`); the rest of lpfast works without it")
    raise ImportError(msg) from e

from .calibration.calibrate import Calibration, LayerStats, calibrate
from .compression.compress import CompressionReport, LayerReport, compress, parse_rule, register_method
from .compression.frontier import plot_frontier
from .compression.linear import fit_linear, params_for_ratio
from .compression.prune import PairReport, PruneReport, ffn_pairs, prune_ffn
from .compression.saving import load_compressed, save_compressed
from .distillation.distill import DistillLayerReport, DistillReport, distill, output_error
from .layers.annealing import DensitySchedule, SparsityAnnealer
from .layers.doped_lstm import DopedLSTM
from .layers.kron import DopedKroneckerLinear, co_matrix_dropout
from .layers.lowrank import LowRankEmbedding, LowRankLinear
from .layers.lowrank_sparse import LowRankSparseLinear
from .layers.projective import ProjectiveEmbedding
from .layers.row_doped import RowDopedEmbedding, RowDopedLinear
from .ops import doped_kp_matmul

__all__ = [
    "Calibration",
    "LayerStats",
    "calibrate",
    "DistillLayerReport",
    "DistillReport",
    "distill",
    "output_error",
    "CompressionReport",
    "LayerReport",
    "compress",
    "plot_frontier",
    "parse_rule",
    "register_method",
    "DensitySchedule",
    "DopedKroneckerLinear",
    "DopedLSTM",
    "LowRankEmbedding",
    "LowRankLinear",
    "ProjectiveEmbedding",
    "PairReport",
    "PruneReport",
    "ffn_pairs",
    "prune_ffn",
    "RowDopedEmbedding",
    "RowDopedLinear",
    "SparsityAnnealer",
    "co_matrix_dropout",
    "doped_kp_matmul",
    "LowRankSparseLinear",
    "fit_linear",
    "params_for_ratio",
    "load_compressed",
    "save_compressed",
]


_compat.install_moved_modules(__name__)


def __getattr__(name: str) -> Any:
    return _compat.moved_module(__name__, name)
