"""Doped Kronecker products: W = sum_r kron(A[r], B[r]) + S with S sparse (arXiv 2102.07071).

``doped_kp_matmul`` and :class:`DopedKronecker` compute ``x @ W.T + bias`` without forming
W. Fitting such a W to a dense matrix (``nearest_kronecker``, ``doped_kp_fit``,
``kron_factor_shapes``) lives in :mod:`lpfast.kron_fit`.
"""

from __future__ import annotations

import math

from typing import Any

import numpy as np

from . import _compat, _native
from ._validate import (
    as_csr,
    as_float_array,
    as_ndarray,
    as_out,
    common_float_dtype,
    doped_matmul_shapes,
    state_entries,
    tensor_as_numpy,
)

__all__ = ["DopedKronecker", "doped_kp_matmul"]


def _csr_data(S: Any) -> Any:
    """The value array of any accepted CSR form, for dtype inference only."""
    if S is None:
        return None
    if isinstance(S, tuple):
        return S[2] if len(S) == 3 else None
    if hasattr(S, "crow_indices"):
        return S.values().detach().numpy()
    return getattr(S, "data", None)


def _operands(A: Any, B: Any, bias: Any, dtype: np.dtype, check_finite: bool):
    """A (R, m1, n1), B (R, m2, n2) and bias (m,) or None as arrays of ``dtype``; (m, n)."""
    A = as_float_array(A, "A", dtype, ndim=(2, 3), check_finite=check_finite)
    B = as_float_array(B, "B", dtype, ndim=(2, 3), check_finite=check_finite)
    A = A[None] if A.ndim == 2 else A
    B = B[None] if B.ndim == 2 else B
    if bias is not None:
        bias = as_float_array(bias, "bias", dtype, ndim=1, check_finite=check_finite)
    m, n = doped_matmul_shapes(A.shape, B.shape, bias_shape=None if bias is None else bias.shape)
    return A, B, bias, m, n


# CSR indices narrow to int32 below this many columns and entries.
_INT32_INDEX_LIMIT = int(np.iinfo(np.int32).max)


def _batch_rows(x: Any, n: int, dtype: np.dtype) -> tuple[np.ndarray, tuple]:
    """x as a C-contiguous (N, n) array of ``dtype`` plus its leading batch shape.

    Finiteness is not checked here: the product kernels check x (``check_finite=``) in C++,
    where it costs 0.1 us instead of NumPy's 2 us at batch 1.
    """
    # Fast path for what a server passes on every call (a C-contiguous array of the right
    # dtype): at batch 1 the general path cost ~8 us, a tenth of the whole product.
    if (type(x) is np.ndarray and x.dtype == dtype and x.ndim >= 1 and x.shape[-1] == n
            and x.flags.c_contiguous):
        lead = x.shape[:-1]
        return x.reshape(math.prod(lead), n), lead
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        x = tensor_as_numpy(x, "x")
    x = as_ndarray(x, "x")
    if x.ndim == 0 or x.shape[-1] != n:  # the shape first: its message names the width
        msg = f"x: expected shape (..., {n}), got {x.shape}"
        raise ValueError(msg)
    if x.dtype != dtype and x.dtype.kind == "f":
        msg = f"x: dtype {x.dtype} does not match the operator's {dtype}; convert x explicitly"
        raise TypeError(msg)
    x = as_float_array(x, "x", dtype, check_finite=False)
    lead = x.shape[:-1]
    return x.reshape(math.prod(lead), n), lead


class DopedKronecker:
    """A prepared doped Kronecker operator ``W = sum_r kron(A[r], B[r]) + S`` (+ ``bias``).

    Validates and lays out its parameters once (owned, read-only, C-contiguous copies; CSR
    indices narrowed to int32 when they fit), so that each call costs little more than the
    arithmetic. Calling it computes ``x @ W.T + bias`` like ``torch.nn.Linear``.

    Parameters
    ----------
    A : array_like, shape (m1, n1) or (R, m1, n1)
    B : array_like, shape (m2, n2) or (R, m2, n2)
        Kronecker factors; R >= 1 is the Kronecker rank. ``W`` has shape (m1*m2, n1*n2)
        with NumPy's ``np.kron`` convention.
    S : CSR matrix of shape (m1*m2, n1*n2), optional
        The sparse doping: a SciPy CSR matrix/array, a torch sparse CSR tensor, or a tuple
        ``(indptr, indices, data)`` with int32 or int64 indices. Duplicate entries add up.
    bias : array_like, shape (m1*m2,), optional
    check_finite : bool
        Refuse NaN/Inf in the parameters and (per call) in ``x``.

    All float arrays must share one dtype (float32 or float64); integer arrays are
    converted to it. The operator is immutable and safe to call from several threads.
    """

    __slots__ = ("A", "B", "_S", "_sell", "_serve", "_shape", "bias", "dtype", "check_finite",
                 "fit_info")

    def __init__(self, A: Any, B: Any, S: Any = None, bias: Any = None, *, check_finite: bool = True):
        dtype = common_float_dtype({"A": A, "B": B, "S.data": _csr_data(S), "bias": bias})
        A, B, bias, m, n = _operands(A, B, bias, dtype, check_finite)
        csr = None
        if S is not None:
            indptr, indices, data = as_csr(S, "S", (m, n), dtype, check_finite=check_finite)
            if max(n, indices.size) < _INT32_INDEX_LIMIT:
                indptr, indices = indptr.astype(np.int32), indices.astype(np.int32)  # copies
            else:  # possibly the caller's own int64 arrays: the operator freezes only its copies
                indptr, indices = indptr.copy(), indices.copy()
            csr = (indptr, indices, data.copy())
        self.A, self.B, self.bias = A.copy(), B.copy(), None if bias is None else bias.copy()
        self._S = csr
        # Single rows of x (the latency-bound call of a server) are served from a second copy
        # of S in the SELL-16 layout (1.6x faster than CSR there; batches keep using CSR) and
        # from B transposed, which the kernel would otherwise transpose on every call:
        # (Bt, slice_ptr, row_of, indices, data).
        self._sell = self._serve = None
        if self._S is not None:
            Bt = np.ascontiguousarray(self.B.transpose(0, 2, 1))
            self._sell = (Bt, *_native.sell_layout(*self._S, cols=n))
        for a in (self.A, self.B, self.bias, *(self._S or ()), *(self._sell or ())):
            if a is not None:
                a.flags.writeable = False
        if self._sell is not None:  # checked once; a call then passes only x and out
            self._serve = _native.sell_kernel(self.A, *self._sell, bias=self.bias)
        self._shape = (m, n)
        self.dtype = dtype
        self.check_finite = check_finite
        self.fit_info: dict[str, Any] = {}

    # -- structure -------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Kronecker rank R."""
        return self.A.shape[0]

    @property
    def a_shape(self) -> tuple[int, int]:
        return self.A.shape[1], self.A.shape[2]

    @property
    def b_shape(self) -> tuple[int, int]:
        return self.B.shape[1], self.B.shape[2]

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) = (m1*m2, n1*n2)."""
        return self._shape

    @property
    def nnz(self) -> int:
        """Stored entries of the doping S."""
        return 0 if self._S is None else int(self._S[2].shape[0])

    @property
    def n_params(self) -> int:
        """Learnable values stored: R*(m1*n1 + m2*n2) + nnz (+ m for the bias)."""
        bias = 0 if self.bias is None else self.bias.shape[0]
        return self.A.size + self.B.size + self.nnz + bias

    @property
    def nbytes(self) -> int:
        """Bytes held by the operator: factors, bias, S as CSR, and the batch-1 serving copies."""
        parts = (self.A, self.B, self.bias, *(self._S or ()), *(self._sell or ()))
        return sum(a.nbytes for a in parts if a is not None)

    @property
    def compression(self) -> float:
        """Dense parameters (m*n, + m with a bias) divided by ``n_params``."""
        m, n = self.shape
        dense = m * n + (0 if self.bias is None else m)
        return dense / max(self.n_params, 1)

    @property
    def S(self):
        """The doping as a ``scipy.sparse.csr_array`` sharing this operator's buffers (or None)."""
        if self._S is None:
            return None
        import scipy.sparse as sp

        indptr, indices, data = self._S
        return sp.csr_array((data, indices, indptr), shape=self.shape, copy=False)

    @property
    def T(self) -> DopedKronecker:
        """The transposed operator W.T (no bias): kron(A.T, B.T) + S.T."""
        S = None if self._S is None else self.S.T.tocsr()
        return DopedKronecker(self.A.transpose(0, 2, 1), self.B.transpose(0, 2, 1), S,
                              check_finite=False)

    def __repr__(self) -> str:
        m, n = self.shape
        return (f"DopedKronecker(shape=({m}, {n}), a_shape={self.a_shape}, b_shape={self.b_shape}, "
                f"rank={self.rank}, nnz={self.nnz}, bias={self.bias is not None}, "
                f"dtype={self.dtype}, compression={self.compression:.1f}x)")

    # -- arithmetic ------------------------------------------------------------------------
    def __call__(self, x: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``x @ W.T + bias``.

        Parameters
        ----------
        x : array_like, shape (..., n1*n2), the operator's dtype (integers are converted)
        out : ndarray, shape (..., m1*m2), optional
            C-contiguous destination of the operator's dtype.

        Returns
        -------
        ndarray, shape (..., m1*m2)

        Cost: O(N*R*n1*m2*(n2 + m1)) flops for the Kronecker GEMMs plus O(N*nnz) for the
        doping, for N rows of x; releases the GIL and uses ``lpfast.get_num_threads()``.
        """
        m, n = self._shape
        rows, lead = _batch_rows(x, n, self.dtype)
        # The operator's own arrays are private read-only copies: only x can overlap out.
        y = as_out(out, (*lead, m), self.dtype, {"x": rows})
        if self._serve is not None and rows.shape[0] == 1:
            self._serve(rows, y.reshape(1, m), self.check_finite)
            return y
        indptr, indices, data = self._S if self._S is not None else (None, None, None)
        _native.doped_kron_matmul(x=rows, A=self.A, B=self.B, indptr=indptr, indices=indices,
                                  data=data, bias=self.bias, out=y.reshape(rows.shape[0], m),
                                  check_finite=self.check_finite)
        return y

    matmul = __call__

    def to_dense(self) -> np.ndarray:
        """W as a dense (m1*m2, n1*n2) array (the bias is not part of W)."""
        W = sum(np.kron(a, b) for a, b in zip(self.A, self.B))
        if self._S is not None:
            W = W + self.S.toarray()
        return np.asarray(W, dtype=self.dtype)

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays that ``from_dict`` turns back into an identical operator."""
        d = {"A": self.A.copy(), "B": self.B.copy()}
        if self._S is not None:
            d["S_indptr"], d["S_indices"], d["S_data"] = (a.copy() for a in self._S)
        if self.bias is not None:
            d["bias"] = self.bias.copy()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, check_finite: bool = True) -> DopedKronecker:
        """Inverse of ``to_dict``."""
        (A, B), S = state_entries(d, "DopedKronecker", ("A", "B"))
        return cls(A, B, S, d.get("bias"), check_finite=check_finite)

    def __reduce__(self):
        # Pickled as its plain arrays: the compiled serving kernel is rebuilt on load.
        return _rebuild_doped_kronecker, (self.to_dict(), self.check_finite, self.fit_info)


def _rebuild_doped_kronecker(state: dict[str, np.ndarray], check_finite: bool,
                             fit_info: dict[str, Any]) -> DopedKronecker:
    op = DopedKronecker.from_dict(state, check_finite=check_finite)
    op.fit_info = fit_info
    return op


def doped_kp_matmul(x: Any, A: Any, B: Any, S: Any = None, bias: Any = None, *,
                    out: np.ndarray | None = None, check_finite: bool = True) -> np.ndarray:
    """``x @ W.T + bias`` for ``W = sum_r kron(A[r], B[r]) + S``, without forming W.

    Parameters
    ----------
    x : array_like, shape (..., n1*n2)
    A : array_like, shape (m1, n1) or (R, m1, n1)
    B : array_like, shape (m2, n2) or (R, m2, n2)
    S : CSR matrix of shape (m1*m2, n1*n2), optional
        SciPy CSR, torch sparse CSR, or ``(indptr, indices, data)`` (int32/int64 indices).
    bias : array_like, shape (m1*m2,), optional
    out : ndarray, shape (..., m1*m2), optional
    check_finite : bool
        Refuse NaN/Inf in any input.

    Returns
    -------
    ndarray, shape (..., m1*m2), the common float dtype of the inputs.

    Every call validates S in O(nnz) and uses the caller's buffers without copying when
    they are C-contiguous of one dtype; for repeated calls, build a :class:`DopedKronecker`
    once instead. Cost as in ``DopedKronecker.__call__``.
    """
    dtype = common_float_dtype({"x": x, "A": A, "B": B, "S.data": _csr_data(S), "bias": bias})
    A, B, bias, m, n = _operands(A, B, bias, dtype, check_finite)
    rows, lead = _batch_rows(x, n, dtype)
    indptr, indices, data = (None, None, None) if S is None else as_csr(
        S, "S", (m, n), dtype, check_finite=check_finite)
    y = as_out(out, (*lead, m), dtype, {"x": rows, "A": A, "B": B, "S.indptr": indptr,
                                        "S.indices": indices, "S.data": data, "bias": bias})
    _native.doped_kron_matmul(x=rows, A=A, B=B, indptr=indptr, indices=indices, data=data,
                              bias=bias, out=y.reshape(rows.shape[0], m), check_finite=check_finite)
    return y


def __getattr__(name: str) -> Any:
    return _compat.moved_name(__name__, name)
