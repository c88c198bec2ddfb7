"""Argument checks shared by every public function: the one place inputs are validated.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
shape or value) naming the argument, and returns the input normalized for the bindings:
C-contiguous float32/float64 arrays, converted at most once and only when needed.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _kind_error(name: str, dtype: np.dtype) -> TypeError:
    return TypeError(f"{name}: expected a real floating-point (or integer) array, got dtype {dtype}")


def float_dtype_of(a: Any, name: str) -> np.dtype | None:
    """The float dtype an array-like computes in: its own if float32/64, None for ints/bools."""
    dtype = np.asarray(a).dtype if not hasattr(a, "dtype") else np.dtype(a.dtype)
    if dtype in FLOAT_DTYPES:
        return dtype
    if dtype.kind in "iub":
        return None
    if dtype.kind == "f":  # float16, longdouble: compute in float64
        return np.dtype(np.float64)
    raise _kind_error(name, dtype)


def common_float_dtype(named: dict[str, Any]) -> np.dtype:
    """The single float dtype shared by the given arrays (None values skipped).

    Integer arrays take the dtype of the float ones (float64 if none is float); float32 and
    float64 mixed is an error rather than a silent upcast of a large array.
    """
    found: dict[np.dtype, str] = {}
    for name, a in named.items():
        if a is None:
            continue
        dt = float_dtype_of(a, name)
        if dt is not None:
            found.setdefault(dt, name)
    if len(found) > 1:
        (d1, n1), (d2, n2) = found.items()
        msg = f"mismatched dtypes: {n1} is {d1} but {n2} is {d2}; convert one explicitly"
        raise TypeError(msg)
    return next(iter(found), np.dtype(np.float64))


def as_float_array(
    a: Any,
    name: str,
    dtype: np.dtype | None = None,
    *,
    ndim: int | tuple[int, ...] | None = None,
    check_finite: bool = True,
) -> np.ndarray:
    """``a`` as a C-contiguous float array of ``dtype`` (default: its own float dtype)."""
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # a torch tensor: view, never copy
        a = a.detach().numpy()
    arr = np.asarray(a)
    own = float_dtype_of(arr, name)
    if dtype is None:
        dtype = own if own is not None else np.dtype(np.float64)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-d" for d in allowed)
            msg = f"{name}: expected a {want} array, got shape {arr.shape}"
            raise ValueError(msg)
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if check_finite:
        require_finite(arr, name)
    return arr


def require_finite(arr: np.ndarray, name: str) -> None:
    """Raise ValueError naming ``name`` unless every entry of the float array is finite."""
    if arr.size and not np.isfinite(arr).all():
        msg = f"{name}: contains NaN or Inf (pass check_finite=False to skip this check)"
        raise ValueError(msg)


def as_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integer in [low, high] (either bound optional)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        msg = f"{name}: expected an integer, got {value!r}"
        raise TypeError(msg)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        msg = f"{name}: expected an integer in [{lo}, {hi}], got {value}"
        raise ValueError(msg)
    return value


def as_float(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite real number in [low, high] (either bound optional)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        msg = f"{name}: expected a real number, got {value!r}"
        raise TypeError(msg)
    value = float(value)
    if not np.isfinite(value):
        msg = f"{name}: expected a finite number, got {value}"
        raise ValueError(msg)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        msg = f"{name}: expected a value in [{lo}, {hi}], got {value}"
        raise ValueError(msg)
    return value


def as_shape2(value: Any, name: str) -> tuple[int, int]:
    """A (rows, cols) pair of non-negative integers."""
    try:
        rows, cols = value
    except (TypeError, ValueError):
        msg = f"{name}: expected a pair (rows, cols), got {value!r}"
        raise TypeError(msg) from None
    return as_int(rows, f"{name}[0]", low=0), as_int(cols, f"{name}[1]", low=0)


def as_csr(
    S: Any,
    name: str,
    shape: tuple[int, int],
    dtype: np.dtype,
    *,
    check_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of a CSR matrix of ``shape``, validated.

    Accepts a SciPy sparse matrix or array (CSR; other formats are converted with
    ``tocsr()``), a torch sparse CSR tensor, or a tuple ``(indptr, indices, data)``.
    Index arrays keep int32 or int64 (other integer types are converted to int64);
    ``data`` becomes ``dtype``.
    """
    from . import _core

    if isinstance(S, tuple):
        if len(S) != 3:
            msg = f"{name}: a CSR tuple is (indptr, indices, data), got {len(S)} items"
            raise TypeError(msg)
        indptr, indices, data = S
    elif hasattr(S, "crow_indices") and hasattr(S, "layout"):  # torch sparse CSR
        if "csr" not in str(S.layout):
            msg = f"{name}: torch sparse tensor must have layout torch.sparse_csr, got {S.layout}"
            raise TypeError(msg)
        if tuple(S.shape) != tuple(shape):
            msg = f"{name}: expected shape {tuple(shape)}, got {tuple(S.shape)}"
            raise ValueError(msg)
        indptr = S.crow_indices().numpy()
        indices = S.col_indices().numpy()
        data = S.values().detach().numpy()
    elif hasattr(S, "tocsr") and hasattr(S, "shape"):  # SciPy sparse
        if tuple(S.shape) != tuple(shape):
            msg = f"{name}: expected shape {tuple(shape)}, got {tuple(S.shape)}"
            raise ValueError(msg)
        if S.format != "csr":
            S = S.tocsr()
        indptr, indices, data = S.indptr, S.indices, S.data
    else:
        msg = (
            f"{name}: expected a SciPy CSR matrix, a torch sparse CSR tensor or a tuple "
            f"(indptr, indices, data), got {type(S).__name__}"
        )
        raise TypeError(msg)
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    for part, arr in (("indptr", indptr), ("indices", indices)):
        if arr.dtype.kind not in "iu":
            msg = f"{name}.{part}: expected an integer array, got dtype {arr.dtype}"
            raise TypeError(msg)
        if arr.ndim != 1:
            msg = f"{name}.{part}: expected a 1-d array, got shape {arr.shape}"
            raise ValueError(msg)
    itype = np.int32 if indptr.dtype == np.int32 and indices.dtype == np.int32 else np.int64
    indptr = np.ascontiguousarray(indptr, dtype=itype)
    indices = np.ascontiguousarray(indices, dtype=itype)
    data = as_float_array(data, f"{name}.data", dtype, ndim=1, check_finite=check_finite)
    if data.shape[0] != indices.shape[0]:
        msg = f"{name}: data has {data.shape[0]} entries but indices has {indices.shape[0]}"
        raise ValueError(msg)
    _core.check_csr(indptr, indices, shape[0], shape[1], name)
    return indptr, indices, data
