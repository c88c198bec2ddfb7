"""``LowRankSparseLinear``: a Linear whose weight is low rank plus sparse, ``W = U V + S``."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from ..._validate import as_float
from .._checks import check_state_csr
from .lowrank import LowRankLinear

__all__ = ["LowRankSparseLinear"]

_S_NAMES = ("S_values", "S_crow_indices", "S_col_indices")


def _csr_of_flat(flat: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """CSR (crow, col) of sorted flat positions; int32 when the indices fit (torch's CSR
    product is ~10% faster with them at 1536 x 384, batch 32)."""
    m, n = shape
    rows, cols = torch.div(flat, n, rounding_mode="floor"), flat % n
    crow = torch.zeros(m + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=m), 0)
    itype = torch.int32 if max(n, flat.numel()) < 2**31 - 1 else torch.int64
    return crow.to(itype), cols.to(itype)


class LowRankSparseLinear(LowRankLinear):
    """``y = (x @ V.T) @ U.T + x @ S.T + bias``: a Linear with weight ``U @ V + S``.

    A :class:`~lpfast.torch.LowRankLinear` (same U, V, bias, constructor arguments and
    checks) plus the sparse doping S.

    Parameters
    ----------
    in_features, out_features : int
    rank : int >= 1
    density : float in [0, 1]
        Fraction of the weight's entries stored in S: ``nnz = round(density * out * in)``.
        A new layer gets a random pattern (torch's RNG) with zero values;
        :func:`lpfast.torch.fit_linear` / :meth:`load_operator_` fit pattern and values.
    bias : bool
    dtype : torch.float32 or torch.float64 (default: torch's default dtype); CPU only.

    Attributes
    ----------
    U : Parameter, shape (out, rank)
    V : Parameter, shape (rank, in)
    S_values : Parameter, shape (nnz,)  (trainable; the pattern is fixed)
    S_crow_indices : buffer, shape (out + 1,), int32 (int64 when needed)
    S_col_indices : buffer, shape (nnz,)
    bias : Parameter, shape (out,), or None

    ``n_params = rank * (out + in) + nnz (+ out)``. The forward runs two GEMMs
    (``F.linear``) and one CSR product (``torch.sparse``), differentiable in every
    parameter and in x. The state_dict round-trips exactly, S's size included.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, density: float = 0.0,
                 bias: bool = True, *, dtype: Optional[torch.dtype] = None, device: Any = None):
        super().__init__(in_features, out_features, rank, bias, dtype=dtype, device=device)
        density = as_float(density, "density", low=0.0, high=1.0)
        m, n = self.out_features, self.in_features
        nnz = int(round(density * m * n))
        crow, col = _csr_of_flat(torch.sort(torch.randperm(m * n)[:nnz]).values, (m, n))
        self.S_values = nn.Parameter(torch.zeros(nnz, dtype=self.U.dtype))
        self.register_buffer("S_crow_indices", crow)
        self.register_buffer("S_col_indices", col)

    @property
    def nnz(self) -> int:
        return int(self.S_values.numel())

    def _sparse(self) -> Tensor:
        with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per call
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.S_crow_indices, self.S_col_indices, self.S_values,
                                           (self.out_features, self.in_features))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in_features) of the layer's dtype -> (..., out_features)."""
        y = super().forward(x)  # checks x
        if self.S_values.numel() == 0:
            return y
        rows = x.reshape(-1, self.in_features)
        return y + (self._sparse() @ rows.T).T.reshape(y.shape)

    def dense_weight(self) -> Tensor:
        """``U @ V + S``, shape (out, in), detached."""
        with torch.no_grad():
            return super().dense_weight() + self._sparse().to_dense()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nnz={self.nnz}"

    def to_operator(self):
        """The layer as an immutable NumPy ``lpfast.LowRankSparse`` (bias included)."""
        from ...calibrated import LowRankSparse

        S = (self.S_crow_indices.numpy(), self.S_col_indices.numpy(), self.S_values.detach().numpy())
        bias = None if self.bias is None else self.bias.detach().numpy()
        return LowRankSparse(self.U.detach().numpy(), self.V.detach().numpy(), S, bias)

    @torch.no_grad()
    def load_operator_(self, op: Any) -> LowRankSparseLinear:
        """Take U, V and S (pattern and values) from an ``lpfast.LowRankSparse`` of this
        layer's shape and rank (its bias, if any, is ignored). Returns self."""
        if tuple(op.shape) != (self.out_features, self.in_features) or op.rank != self.rank:
            msg = (f"op: expected an operator of shape {(self.out_features, self.in_features)} "
                   f"and rank {self.rank}, got {op!r}")
            raise ValueError(msg)
        dtype = self.U.dtype
        self.U.copy_(torch.from_numpy(np.array(op.U)))
        self.V.copy_(torch.from_numpy(np.array(op.V)))
        S = op.S.copy() if op.nnz else sp.csr_array((self.out_features, self.in_features))
        S.sum_duplicates()  # canonical CSR: one entry per position, sorted columns
        itype = np.int32 if max(self.in_features, S.nnz) < 2**31 - 1 else np.int64
        crow = torch.from_numpy(S.indptr.astype(itype))
        col = torch.from_numpy(S.indices.astype(itype))
        vals = torch.from_numpy(np.array(S.data)).to(dtype)
        self.S_values = nn.Parameter(vals, requires_grad=self.S_values.requires_grad)
        self.S_crow_indices, self.S_col_indices = crow, col
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torch's CSR product trusts its pattern (built without invariant checks): a
        # state_dict is checked once, here, to torch's layout (sorted columns).
        check_state_csr(self, state_dict, prefix, (self.out_features, self.in_features),
                        sorted_columns=True)
        # S's size is the fitted one, not the constructor's: adopt the stored size (values
        # keep this layer's dtype, indices the stored integer type) before loading.
        for name in _S_NAMES:
            src = state_dict.get(prefix + name)
            cur = getattr(self, name)
            if src is None or (src.shape == cur.shape and (cur.is_floating_point() or src.dtype == cur.dtype)):
                continue
            if name == "S_values":
                self.S_values = nn.Parameter(torch.empty(src.shape, dtype=cur.dtype),
                                             requires_grad=cur.requires_grad)
            else:
                setattr(self, name, torch.empty(src.shape, dtype=src.dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
