"""Argument checks shared by every public function: the one place inputs are validated.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
shape or value) naming the argument, and returns the input normalized for the bindings:
C-contiguous float32/float64 arrays, converted at most once and only when needed. What
leaves this module goes to ``_native`` (the unchecked path over ``_core``) unchanged.

Internal, made for sharing: every module of the package (the torch layers too) imports
its checks from here; the names carry no leading underscore for that reason.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _kind_error(name: str, dtype: Any) -> TypeError:
    return TypeError(f"{name}: expected a real floating-point (or integer) array, got dtype {dtype}")


def float_dtype_of(a: Any, name: str) -> np.dtype | None:
    """The float dtype an array-like computes in: its own if float32/64, None for ints/bools."""
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # a torch tensor: its dtype by name
        tname = str(a.dtype).removeprefix("torch.")
        try:
            dtype = np.dtype("float16" if tname == "bfloat16" else tname)
        except TypeError:
            raise _kind_error(name, tname) from None
    else:
        dtype = as_ndarray(a, name).dtype if not hasattr(a, "dtype") else np.dtype(a.dtype)
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
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # a CPU torch tensor: view, never copy
        a = tensor_as_numpy(a, name)
    arr = as_ndarray(a, name)
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


def tensor_as_numpy(t: Any, name: str) -> np.ndarray:
    """A torch tensor's values as NumPy (a view of a dense CPU tensor); bfloat16, which
    NumPy lacks, becomes float64 (as float16 computes in float64 here)."""
    if getattr(t, "is_meta", False):
        msg = f"{name}: a meta tensor has no values to compute with"
        raise ValueError(msg)
    t = t.detach()
    if str(getattr(t, "dtype", "")) == "torch.bfloat16":
        t = t.double()
    try:
        return t.cpu().numpy()
    except (TypeError, RuntimeError) as e:  # sparse layouts, tensors NumPy cannot hold
        msg = f"{name}: cannot read this tensor as an array ({e})"
        raise TypeError(msg) from None


def as_ndarray(a: Any, name: str) -> np.ndarray:
    """``np.asarray(a)``, with the error of a ragged nested sequence naming ``name``."""
    try:
        return np.asarray(a)
    except ValueError as e:  # "setting an array element with a sequence ... inhomogeneous"
        msg = f"{name}: expected a rectangular array, got a ragged sequence ({e})"
        raise ValueError(msg) from None


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
    return _in_range(int(value), name, low, high, "an integer")


def as_float(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite real number in [low, high] (either bound optional)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        msg = f"{name}: expected a real number, got {value!r}"
        raise TypeError(msg)
    value = float(value)
    if not np.isfinite(value):
        msg = f"{name}: expected a finite number, got {value}"
        raise ValueError(msg)
    return _in_range(value, name, low, high, "a value")


def _in_range(value: Any, name: str, low: Any, high: Any, what: str) -> Any:
    """``value`` if it lies in [low, high] (None: unbounded), else ValueError naming ``name``."""
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        msg = f"{name}: expected {what} in [{lo}, {hi}], got {value}"
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
    from . import _native

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
    _native.check_csr(indptr, indices, shape[0], shape[1], name)
    return indptr, indices, data


def state_entries(d: Any, owner: str, required: tuple[str, ...]) -> tuple[list[Any], Any]:
    """The ``required`` entries of a ``to_dict()`` mapping ``d`` and its sparse part.

    Returns ``([d[key] for key in required], S)`` with ``S`` the tuple ``(S_indptr,
    S_indices, S_data)``, or None when none of the three keys is present. ``owner`` names
    the class whose ``to_dict`` made ``d`` (for the messages).
    """
    from collections.abc import Mapping

    if not isinstance(d, Mapping):
        msg = f"d: expected the dict {owner}.to_dict() returns, got {type(d).__name__}"
        raise TypeError(msg)
    for key in required:
        if key not in d:
            msg = f"d: missing key {key!r} (expected the output of {owner}.to_dict)"
            raise ValueError(msg)
    sparse = ("S_indptr", "S_indices", "S_data")
    present = [k for k in sparse if k in d]
    if present and len(present) < len(sparse):
        absent = [k for k in sparse if k not in d]
        msg = (f"d: has {', '.join(map(repr, present))} but not {', '.join(map(repr, absent))}: "
               f"a sparse part needs all of {sparse}")
        raise ValueError(msg)
    return [d[key] for key in required], tuple(d[k] for k in sparse) if present else None


# -- scalars and choices -----------------------------------------------------------------------

def as_choice(value: Any, name: str, choices: tuple[str, ...], *,
              type_error: bool = True) -> str:
    """One of ``choices`` (strings): ValueError for another string, TypeError for a non-string
    (ValueError with ``type_error=False``, the error some functions have always raised)."""
    if type_error and not isinstance(value, str):
        msg = f"{name}: expected one of {choices}, got {value!r}"
        raise TypeError(msg)
    if not isinstance(value, str) or value not in choices:
        msg = f"{name}: expected one of {choices}, got {value!r}"
        raise ValueError(msg)
    return value


def as_callable(value: Any, name: str, signature: str) -> Any:
    """``value`` if it is None or callable; ``signature`` describes the call, e.g. "(row)"."""
    if value is not None and not callable(value):
        msg = f"{name}: expected a callable{signature}, got {type(value).__name__}"
        raise TypeError(msg)
    return value


class RatioTooSmall(ValueError):
    """A compression ratio whose budget leaves no room for the smallest form fitted.

    Raised (by ``doped_kp_fit`` and the layers built on it) instead of a plain ValueError
    so that callers holding the ratio under another name (a ``compress`` rule) can say so
    by catching the class, without reading the message.
    """


def as_ratio(value: Any, name: str = "ratio") -> float:
    """A compression ratio: a finite number > 1."""
    value = as_float(value, name)
    if not value > 1:
        msg = f"{name}: expected a compression ratio > 1, got {value}"
        raise ValueError(msg)
    return value


def as_fractions(value: Any, name: str) -> tuple[float, ...]:
    """A non-empty sequence of numbers in [0, 1], as a tuple of floats."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        msg = f"{name}: expected a sequence of fractions in [0, 1], got {value!r}"
        raise TypeError(msg)
    fractions = tuple(as_float(f, name, low=0.0, high=1.0) for f in value)
    if not fractions:
        msg = f"{name}: expected at least one fraction"
        raise ValueError(msg)
    return fractions


# -- seeds: one check, then the form each consumer draws from -----------------------------------

def check_seed(seed: Any, name: str = "seed") -> Any:
    """None, a non-negative integer (as int), a SeedSequence or a numpy Generator."""
    if seed is None or isinstance(seed, (np.random.Generator, np.random.SeedSequence)):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        msg = (f"{name}: expected None, a non-negative integer, a SeedSequence or a numpy "
               f"Generator, got {seed!r}")
        raise TypeError(msg)
    if seed < 0:
        msg = f"{name}: expected a non-negative integer, got {seed}"
        raise ValueError(msg)
    return int(seed)


def as_generator(seed: Any, name: str = "seed") -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` of a checked seed (a Generator is used as is)."""
    return np.random.default_rng(check_seed(seed, name))


def as_seed_sequence(seed: Any, name: str = "seed") -> np.random.SeedSequence:
    """A SeedSequence to spawn children from; a Generator gives one from its next draw."""
    seed = check_seed(seed, name)
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(0, 2**63 - 1)))
    return np.random.SeedSequence(seed)


def seed_int(seed: Any, name: str = "seed") -> int:
    """A 63-bit integer seed for the C++ kernels: the first draw of ``default_rng(seed)``."""
    return int(as_generator(seed, name).integers(0, 2**63 - 1))


# -- points, row weights and the IRLS floor ------------------------------------------------------

def as_matrix(a: Any, name: str, *, min_rows: int = 1, min_cols: int = 1,
              check_finite: bool = True) -> np.ndarray:
    """A 2-d float array (own float dtype, else float64) of at least min_rows x min_cols."""
    arr = as_float_array(a, name, ndim=2, check_finite=check_finite)
    if arr.shape[0] < min_rows or arr.shape[1] < min_cols:
        msg = (f"{name}: expected an (n, d) matrix with n >= {min_rows} and d >= {min_cols}, "
               f"got shape {arr.shape}")
        raise ValueError(msg)
    return arr


def as_rows(a: Any, name: str, d: int, dtype: np.dtype, *, single: bool = False) -> np.ndarray:
    """Rows of length d as a 2-d array of ``dtype``; with ``single``, a 1-d row becomes (1, d)."""
    arr = as_float_array(a, name, dtype, ndim=(1, 2) if single else 2)
    rows = arr.reshape(1, -1) if arr.ndim == 1 else arr
    if rows.shape[1] != d:
        want = f"rows of length {d}" if single else f"shape (m, {d})"
        msg = f"{name}: expected {want}, got shape {arr.shape}"
        raise ValueError(msg)
    return rows


def as_out(out: Any, shape: tuple[int, ...], dtype: np.dtype,
           inputs: dict[str, np.ndarray | None]) -> np.ndarray:
    """A new array of ``shape``, or the caller's ``out=``: C-contiguous, writeable, of
    ``dtype`` and ``shape``, and sharing memory with none of ``inputs`` (name -> the
    normalized array the kernel reads, None skipped): the kernels read every input while
    they write out, so an ``out`` over A would overwrite A mid-product."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or not out.flags.c_contiguous:
        msg = f"out: expected a C-contiguous numpy array of dtype {dtype}"
        raise TypeError(msg)
    if out.shape != tuple(shape):
        msg = f"out: expected shape {tuple(shape)}, got {out.shape}"
        raise ValueError(msg)
    if not out.flags.writeable:
        msg = "out: array is read-only"
        raise ValueError(msg)
    for name, a in inputs.items():
        if a is not None and np.may_share_memory(out, a):
            msg = f"out: must not overlap {name}"
            raise ValueError(msg)
    return out


def as_row_weights(weights: Any, n: int, dtype: Any = np.float64, *, name: str = "weights",
                   rows: str = "X", ones: bool = False) -> np.ndarray | None:
    """Per-row weights: shape (n,), finite, non-negative, with a positive sum, in ``dtype``.

    ``None`` stays None, or becomes ``ones(n)`` with ``ones=True``. ``rows`` names the
    matrix whose rows they weigh (for the message).
    """
    if weights is None:
        return np.ones(n, dtype=dtype) if ones else None
    w = as_float_array(weights, name, np.dtype(dtype), ndim=1)
    if w.shape[0] != n:
        msg = f"{name}: expected shape ({n},) (one per row of {rows}), got {w.shape}"
        raise ValueError(msg)
    if (w < 0).any():
        msg = f"{name}: must be non-negative"
        raise ValueError(msg)
    if not w.sum() > 0:
        msg = f"{name}: must have a positive sum"
        raise ValueError(msg)
    return w


def default_eps(X: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The IRLS distance floor: sqrt(machine epsilon of X's dtype) * weighted RMS row norm.

    The floor keeps IRLS weights max(dist, eps)^(p-2) finite for rows on the subspace (p < 2)
    and is relative to the data's scale; an all-zero X gets eps = 1. Used by lp_subspace,
    k_subspaces and the row-doping fitters alike.
    """
    # Row norms summed in X's dtype: a floor needs no more, and a float64 sum over float32
    # rows took 13 ms of a 30522 x 384 fit against 2.5 ms. Squares that overflow or vanish
    # in X's dtype are summed again in float64.
    def rms(sq: np.ndarray) -> float:
        if weights is None:
            return float(np.sqrt(float(sq.mean())))
        w = weights.astype(np.float64, copy=False)
        return float(np.sqrt(float(w @ sq / w.sum())))

    r = rms(np.einsum("ij,ij->i", X, X).astype(np.float64))
    if not 0 < r < np.inf:
        r = rms(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    return float(np.sqrt(np.finfo(X.dtype).eps) * r) if r > 0 else 1.0


# -- the data's scale: fits run on X / 2**e where X's own scale would under- or overflow ----------

#: Largest exponents (of 2) for the norm bound of X's rows within which float32 and float64
#: fits run on X as it is: squared norms and Gram sums of n*d such entries (omega <= 1) stay
#: far from FLT_MAX (2**128) and the squares of distances a thousandth of the rows' norms
#: stay normal. float32 data at 1e-30 or 1e19 lay outside: Grams underflowed or overflowed.
_SAFE_EXPONENT = {np.dtype(np.float32): 40, np.dtype(np.float64): 400}
#: p-th powers of distances (costs) and (p-2)-th powers (IRLS weights) are formed in
#: float64: a norm bound of 2**e keeps them finite while |e| * p stays below this.
_POWER_EXPONENT = 900
#: The largest p the fits accept: with the rows scaled to norm <= 1, costs sum p-th powers
#: of relative distances, which vanish in float64 beyond this for distances of a few 1e-3.
MAX_P = 100.0


def scale_exponent(X: np.ndarray, p: float = 2.0) -> int:
    """e such that the fits run on ``X / 2**e`` (0: on X itself).

    The lp fits are scale-equivariant (bases unchanged, costs times ``2**(e p)``), so when
    the bound ``sqrt(d) * max|x|`` on the row norms lies outside what X's dtype computes
    safely (``_SAFE_EXPONENT``; for p > 2 also the float64 range of the p-th powers), the
    rows are scaled by the power of two (exact) that brings that bound into [1/2, 1). One
    pass for max and min, no copy; the scaled copy is made by the caller only when e != 0.
    """
    if X.size == 0:
        return 0
    top = max(float(X.max()), -float(X.min()))
    if not 0 < top < np.inf:
        return 0
    # frexp: top = f * 2**e1 with f in [0.5, 1); the norm bound sqrt(d) * top < 2**e.
    e = np.frexp(top)[1] + int(np.ceil(0.5 * np.log2(X.shape[-1])))
    limit = _SAFE_EXPONENT[X.dtype]
    if p > 2:
        limit = min(limit, int(_POWER_EXPONENT / p))
    return 0 if -limit <= e <= limit else int(e)


def scaled(X: np.ndarray, e: int) -> np.ndarray:
    """X / 2**e (exact for normal numbers): X itself for e = 0, else a new array."""
    return X if e == 0 else np.ldexp(X, -e)


def unscaled(value: Any, e: int, power: float) -> Any:
    """value * 2**(e * power) (a float or an array), with no intermediate overflow: only a
    result beyond float64's range becomes inf (or 0)."""
    if e == 0:
        return value
    t = e * power
    whole = int(np.floor(t))
    with np.errstate(over="ignore", under="ignore"):
        out = np.ldexp(np.asarray(value, dtype=np.float64) * 2.0 ** (t - whole), whole)
    return float(out) if np.ndim(out) == 0 else out


def as_p(p: Any, name: str = "p", low: float = 1.0) -> float:
    """The exponent of an lp fit: a finite number in [low, MAX_P]."""
    return as_float(p, name, low=low, high=MAX_P)


def as_scaled_eps(eps: Any, X_fit: np.ndarray, weights: np.ndarray | None,
                  e: int) -> tuple[float, float]:
    """(eps in the caller's units, eps for the fit on ``X_fit = X / 2**e``): a given eps is
    scaled down, the default is taken on X_fit (exactly 2**-e times X's, where X's squares
    would not have under- or overflowed) and scaled up for the report."""
    if eps is not None:
        eps = as_eps(eps, X_fit, weights)
        return eps, float(np.ldexp(eps, -e))
    fit = default_eps(X_fit, weights)
    return float(np.ldexp(fit, e)), fit


def as_eps(eps: Any, X: np.ndarray, weights: np.ndarray | None) -> float:
    """A given positive ``eps``, or ``default_eps(X, weights)`` for None."""
    if eps is None:
        return default_eps(X, weights)
    eps = as_float(eps, "eps", low=0.0)
    if not eps > 0:
        msg = "eps: expected eps > 0"
        raise ValueError(msg)
    return eps


def as_basis(B: Any, name: str, d: int, k: int | None, dtype: np.dtype) -> np.ndarray:
    """A (d, k) float array of ``dtype`` (any k >= 1 when k is None); orthonormality not checked."""
    B = as_float_array(B, name, dtype, ndim=2)
    if B.shape[0] != d or (k is not None and B.shape[1] != k) or B.shape[1] < 1:
        want = f"({d}, {k})" if k is not None else f"({d}, k)"
        msg = f"{name}: expected shape {want}, got {B.shape}"
        raise ValueError(msg)
    return B


def orthonormal_columns(B: np.ndarray, name: str) -> np.ndarray:
    """The columns of B orthonormalized (QR, signs as in R's diagonal); full rank required."""
    Q, R = np.linalg.qr(B.astype(np.float64))
    diag = np.abs(np.diag(R))
    if diag.min() <= 1e-8 * max(diag.max(), np.finfo(np.float64).tiny):
        msg = f"{name}: columns are linearly dependent (need rank {B.shape[1]})"
        raise ValueError(msg)
    Q *= np.sign(np.diag(R))
    return np.ascontiguousarray(Q, dtype=B.dtype)


# -- Kronecker shapes ----------------------------------------------------------------------------

def as_factor_shapes(shape: tuple[int, int], a_shape: Any, b_shape: Any,
                     what: str = "W") -> tuple[tuple[int, int], tuple[int, int]]:
    """(m1, n1), (m2, n2) with (m1*m2, n1*n2) == shape; ``what`` names the factored matrix."""
    (m1, n1), (m2, n2) = as_shape2(a_shape, "a_shape"), as_shape2(b_shape, "b_shape")
    if (m1 * m2, n1 * n2) != tuple(shape):
        msg = (f"a_shape={a_shape} and b_shape={b_shape} do not factor {what}'s shape "
               f"{tuple(shape)}: need (m1*m2, n1*n2) = {tuple(shape)}")
        raise ValueError(msg)
    return (m1, n1), (m2, n2)


def doped_matmul_shapes(A_shape: tuple[int, ...], B_shape: tuple[int, ...],
                        x_shape: tuple[int, ...] | None = None,
                        bias_shape: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(m, n) = (m1*m2, n1*n2) of ``x @ W.T + bias``, W = sum_r kron(A[r], B[r]) (+ S).

    Shapes only (tuples), so NumPy arrays and torch tensors share it: A (R, m1, n1), B
    (R, m2, n2) with the same R >= 1, x (..., n) and bias (m,) when given.
    """
    if len(A_shape) != 3 or len(B_shape) != 3:
        msg = (f"A, B: expected (R, m1, n1) and (R, m2, n2) arrays, got shapes "
               f"{tuple(A_shape)} and {tuple(B_shape)}")
        raise ValueError(msg)
    if A_shape[0] != B_shape[0]:
        msg = f"A and B: Kronecker ranks differ, A has {A_shape[0]} factors and B has {B_shape[0]}"
        raise ValueError(msg)
    if A_shape[0] < 1:
        msg = "A, B: need at least one Kronecker factor (rank >= 1)"
        raise ValueError(msg)
    m, n = A_shape[1] * B_shape[1], A_shape[2] * B_shape[2]
    if x_shape is not None and (len(x_shape) == 0 or x_shape[-1] != n):
        msg = f"x: expected shape (..., {n}), got {tuple(x_shape)}"
        raise ValueError(msg)
    if bias_shape is not None and tuple(bias_shape) != (m,):
        msg = f"bias: expected shape ({m},), got {tuple(bias_shape)}"
        raise ValueError(msg)
    return m, n
