"""The compressed drop-in layers (``torch.nn.Module``, CPU, float32/float64), one module each.

``kron`` (doped Kronecker, with ``annealing``'s density schedule), ``doped_lstm`` (an LSTM
whose gate matrices are doped Kronecker products, annealed the same way), ``lowrank`` and
``lowrank_sparse``, ``projective``, ``row_doped``. Import them from :mod:`lpfast.torch`.
"""

from __future__ import annotations

from typing import Any

from ... import _compat


def __getattr__(name: str) -> Any:
    return _compat.moved_name(__name__, name)
