"""Compressed drop-in layers (``torch.nn.Module``, CPU, float32/float64), one module each:

* ``kron.py``        :class:`DopedKroneckerLinear` and :func:`co_matrix_dropout` (Doping,
  arXiv 2102.07071); ``annealing.py`` :class:`DensitySchedule`, :class:`SparsityAnnealer`;
* ``lowrank.py``     :class:`LowRankLinear`, :class:`LowRankEmbedding` (lp subspaces,
  arXiv 2009.05647);
* ``projective.py``  :class:`ProjectiveEmbedding` (k subspaces, arXiv 2010.04290);
* ``row_doped.py``   the row-doped layers of ``lpfast.row_doped_fit`` / the planner.

Every layer has ``n_params`` (stored learnable values) and ``dense_weight()`` (the weight it
represents, for reconstruction errors), and its ``state_dict`` round-trips exactly into a
layer built with the same constructor arguments. This module keeps the
``lpfast.torch.layers`` import path of the first five working.
"""

from __future__ import annotations

from .annealing import DensitySchedule, SparsityAnnealer
from .kron import DopedKroneckerLinear, co_matrix_dropout
from .lowrank import LowRankEmbedding, LowRankLinear
from .projective import ProjectiveEmbedding

__all__ = [
    "DensitySchedule",
    "DopedKroneckerLinear",
    "LowRankEmbedding",
    "LowRankLinear",
    "ProjectiveEmbedding",
    "SparsityAnnealer",
    "co_matrix_dropout",
]
