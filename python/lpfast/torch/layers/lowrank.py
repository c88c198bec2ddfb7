"""Low-rank layers, ``W ≈ U @ V`` from an lp subspace of W's rows (``lpfast.lp_subspace``;
p = 2 is the truncated SVD, p = 1 the robust fit of arXiv 2009.05647):

* :class:`LowRankLinear`  ``y = (x @ V.T) @ U.T + bias``;
* :class:`LowRankEmbedding`  a lookup of rank-k rows, then one (k, d) product.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import lp_subspace
from ..._validate import as_float, as_int
from .._checks import (check_embedding, check_indices, check_input, check_module, embedding_shape,
                      layer_dtype)

__all__ = ["LowRankEmbedding", "LowRankLinear"]


def _lp_factors(E: Tensor, rank: int, p: float, **fit: Any) -> tuple[Tensor, Tensor, Any]:
    p = as_float(p, "p", low=1.0)
    high = min(E.shape)
    rank = as_int(rank, "rank", low=1, high=high)
    res = lp_subspace(E.detach().numpy(), rank, p, **fit)
    U, Vt = res.factorize()
    return torch.from_numpy(np.ascontiguousarray(U)), torch.from_numpy(Vt.copy()), res


class LowRankLinear(nn.Module):
    """``y = (x @ V.T) @ U.T + bias``: a Linear whose (out, in) weight is ``U @ V``.

    Parameters
    ----------
    in_features, out_features : int
    rank : int >= 1
    bias : bool
    dtype : torch.float32 or torch.float64

    Attributes
    ----------
    V : Parameter, shape (rank, in_features)   (orthonormal rows after ``from_linear``)
    U : Parameter, shape (out_features, rank)
    bias : Parameter, shape (out_features,), or None

    ``n_params = rank * (in + out) (+ out)``; the forward costs ``rank * (in + out)``
    multiply-adds per row instead of ``in * out``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 dtype: Optional[torch.dtype] = None, device: Any = None):
        super().__init__()
        self.in_features = as_int(in_features, "in_features", low=1)
        self.out_features = as_int(out_features, "out_features", low=1)
        self.rank = as_int(rank, "rank", low=1)
        dtype = layer_dtype(dtype, device)
        self.V = nn.Parameter(torch.empty(self.rank, self.in_features, dtype=dtype))
        self.U = nn.Parameter(torch.empty(self.out_features, self.rank, dtype=dtype))
        nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.U, a=math.sqrt(5))
        if bias:
            b = 1.0 / math.sqrt(self.in_features)
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=dtype).uniform_(-b, b))
        else:
            self.register_parameter("bias", None)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in_features) -> (..., out_features)."""
        check_input(x, self.in_features, self.U.dtype)
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def dense_weight(self) -> Tensor:
        """``U @ V``, shape (out, in), detached."""
        with torch.no_grad():
            return self.U @ self.V

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, p: float = 1.0, **fit: Any) -> LowRankLinear:
        """Factor ``linear.weight`` (out, in) on the lp subspace of its rows.

        Parameters
        ----------
        linear : torch.nn.Linear, float32/float64, CPU
        rank : int, 1 <= rank <= min(out, in)
        p : float >= 1
            lp exponent of ``lpfast.lp_subspace`` (p = 2: truncated SVD, the baseline;
            p = 1: robust to outlier neurons).
        **fit
            Passed to ``lpfast.lp_subspace`` (``max_iter``, ``tol``, ``coreset``, ``seed`` …).

        Returns
        -------
        LowRankLinear with V = basis.T (rank, in), U = W @ basis (out, rank), the bias copied,
        and ``fit_info`` (the ``LpSubspace`` result).
        """
        check_module(linear, nn.Linear, "linear")
        U, V, res = _lp_factors(linear.weight, rank, p, **fit)
        layer = cls(linear.in_features, linear.out_features, U.shape[1],
                    bias=linear.bias is not None, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.U.copy_(U)
            layer.V.copy_(V)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.fit_info = res
        return layer


class LowRankEmbedding(nn.Module):
    """Embedding whose (n, d) table is ``weight @ proj``: a lookup of rank-k rows, then one
    (k, d) product.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    rank : int >= 1
    padding_idx : int, optional
        As ``nn.Embedding``: that row gets no gradient.
    dtype : torch.float32 or torch.float64

    Attributes
    ----------
    weight : Parameter, shape (num_embeddings, rank)
    proj : Parameter, shape (rank, embedding_dim)

    ``n_params = rank * (n + d)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int,
                 padding_idx: Optional[int] = None, *, dtype: Optional[torch.dtype] = None,
                 device: Any = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = embedding_shape(
            num_embeddings, embedding_dim, padding_idx)
        self.rank = as_int(rank, "rank", low=1)
        dtype = layer_dtype(dtype, device)
        self.weight = nn.Parameter(torch.randn(self.num_embeddings, self.rank, dtype=dtype))
        self.proj = nn.Parameter(torch.empty(self.rank, self.embedding_dim, dtype=dtype))
        nn.init.orthogonal_(self.proj)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        """Indices (...) -> (..., embedding_dim)."""
        check_indices(x)
        return F.embedding(x, self.weight, self.padding_idx) @ self.proj

    def dense_weight(self) -> Tensor:
        with torch.no_grad():
            return self.weight @ self.proj

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"
                + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}"))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, rank: int, p: float = 1.0, **fit: Any) -> LowRankEmbedding:
        """Factor ``emb.weight`` (n, d) on the lp subspace of its rows (``lpfast.lp_subspace``).

        Parameters
        ----------
        emb : torch.nn.Embedding, float32/float64, CPU (no max_norm, not sparse)
        rank : int, 1 <= rank <= min(n, d)
        p : float >= 1 (p = 2: truncated SVD; p = 1: robust, arXiv 2009.05647)
        **fit : passed to ``lpfast.lp_subspace``

        Returns
        -------
        LowRankEmbedding with weight = E @ basis (n, rank), proj = basis.T (rank, d), and
        ``fit_info`` (the ``LpSubspace``).
        """
        check_embedding(emb)
        U, V, res = _lp_factors(emb.weight, rank, p, **fit)
        layer = cls(emb.num_embeddings, emb.embedding_dim, U.shape[1], emb.padding_idx,
                    dtype=emb.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(U)
            layer.proj.copy_(V)
        layer.fit_info = res
        return layer
