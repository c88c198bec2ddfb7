"""torch integration: differentiable ops and compressed layers (CPU, no libtorch linking).

Needs ``pip install torch`` (any 2.4 <= version < 2.14; ``pip install "lpfast[torch]"``).
``import lpfast`` works without torch; only this subpackage needs it.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where torch is missing
    msg = ("lpfast.torch needs PyTorch: install it with `pip install torch==2.13.0` "
           "(or `pip install \"lpfast[torch]\"`); the rest of lpfast works without it")
    raise ImportError(msg) from e

from .annealing import DensitySchedule, SparsityAnnealer
from .calibrate import Calibration, LayerStats, calibrate
from .distill import DistillLayerReport, DistillReport, distill, output_error
from .compress import CompressionReport, LayerReport, compress, parse_rule, register_method
from .kron import DopedKroneckerLinear, co_matrix_dropout
from .lowrank import LowRankEmbedding, LowRankLinear
from .ops import doped_kp_matmul
from .projective import ProjectiveEmbedding
from .row_doped import RowDopedEmbedding, RowDopedLinear
from .lowrank_sparse import LowRankSparseLinear
from .calibrated import fit_linear, params_for_ratio

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
    "parse_rule",
    "register_method",
    "DensitySchedule",
    "DopedKroneckerLinear",
    "LowRankEmbedding",
    "LowRankLinear",
    "ProjectiveEmbedding",
    "RowDopedEmbedding",
    "RowDopedLinear",
    "SparsityAnnealer",
    "co_matrix_dropout",
    "doped_kp_matmul",
    "LowRankSparseLinear",
    "fit_linear",
    "params_for_ratio",
]
