"""The result of row doping: a factorization of E plus rows stored exactly (:class:`RowDoped`).

Evaluation (``reconstruct``, ``lookup``: the embedding-layer semantics the torch layers
reproduce), the exact parameter count, and the plain-array state (``to_dict`` /
``RowDoped.from_dict``) that carries a fit to a torch layer or a file. Fitted by
:func:`lpfast.row_doped_fit` and :func:`lpfast.plan_compression`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import as_float, as_float_array, as_int, float_dtype_of

__all__ = ["METHODS", "RowDoped", "kind_of"]

METHODS = ("svd", "lp", "projective")


def kind_of(method: str) -> str:
    """The layout of a method's factorization: "lowrank" (svd, lp) or "projective"."""
    return "projective" if method == "projective" else "lowrank"


_FORMAT = "lpfast.row_doped"
_VERSION = 1
_ARRAYS = {
    "lowrank": ("exact_indices", "exact_rows", "U", "Vt"),
    "projective": ("exact_indices", "exact_rows", "labels", "coefficients", "bases"),
}



class RowDoped:
    """A factorization of E (n, d) plus rows stored exactly; result of :func:`row_doped_fit`.

    Row i of the reconstruction is ``exact_rows[s]`` if ``i == exact_indices[s]``, else the
    factorization's row: with ``rest = rest_indices`` (the other rows, increasing) and
    ``t`` the position of i in ``rest`` (``t = i - searchsorted(exact_indices, i)``):

    * low rank (``"svd"``, ``"lp"``): ``U[t] @ Vt``;
    * projective: ``coefficients[t] @ bases[labels[t]].T``.

    Attributes
    ----------
    method : {"svd", "lp", "projective"}
    p : float
        Exponent of the fitted cost (2 for ``"svd"``).
    shape : tuple (n, d)
    rank : int
        k (low rank) or j, the dimension of each subspace (projective).
    n_subspaces : int
        K (projective); 1 for low rank.
    exact_indices : ndarray of int64, shape (R,)
        Sorted, distinct rows stored exactly.
    exact_rows : ndarray, shape (R, d), E's dtype
        ``E[exact_indices]``.
    U : ndarray, shape (n - R, k), and Vt : ndarray, shape (k, d)
        Low rank only (else None): ``U = E[rest] @ Vt.T`` with Vt orthonormal rows.
    labels : ndarray of int64, shape (n - R,); coefficients : ndarray, shape (n - R, j);
    bases : ndarray, shape (K, d, j)
        Projective only (else None): subspace of each non-exact row, its coordinates, and
        the orthonormal bases.
    error : float
        Weighted relative error on the fitted E:
        ``sqrt(sum_i w_i ||e_i - ê_i||^2 / sum_i w_i ||e_i||^2)`` (0 for exact rows).
    cost : float
        The lp cost of the residuals, ``sum_i w_i ||e_i - ê_i||^p`` at this ``p``.
    budget : int or None
        The parameter budget the fit was asked to respect.
    history : list of dict
        Splits tried: ``rank``, ``n_exact``, ``n_params``, ``error`` (best round),
        ``round_errors``, ``seconds``.
    """

    __slots__ = ("method", "p", "shape", "rank", "n_subspaces", "exact_indices", "exact_rows",
                 "U", "Vt", "labels", "coefficients", "bases", "error", "cost", "budget",
                 "history")

    def __init__(self, *, method: str, p: float, shape: tuple[int, int], rank: int,
                 n_subspaces: int, exact_indices: np.ndarray, exact_rows: np.ndarray,
                 U: np.ndarray | None = None, Vt: np.ndarray | None = None,
                 labels: np.ndarray | None = None, coefficients: np.ndarray | None = None,
                 bases: np.ndarray | None = None, error: float = float("nan"),
                 cost: float = float("nan"), budget: int | None = None,
                 history: list[dict[str, Any]] | None = None):
        self.method, self.p, self.shape = method, float(p), (int(shape[0]), int(shape[1]))
        self.rank, self.n_subspaces = int(rank), int(n_subspaces)
        self.exact_indices, self.exact_rows = exact_indices, exact_rows
        self.U, self.Vt = U, Vt
        self.labels, self.coefficients, self.bases = labels, coefficients, bases
        self.error, self.cost = float(error), float(cost)
        self.budget = None if budget is None else int(budget)
        self.history = [] if history is None else history

    # -- sizes --

    @property
    def n_exact(self) -> int:
        return int(self.exact_indices.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.exact_rows.dtype

    def _arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in _ARRAYS[kind_of(self.method)]}

    @property
    def n_params(self) -> int:
        """Numbers stored: every factor entry, exact value, exact-row index and label.

        Equals ``sum(a.size for a in arrays of to_dict())`` and the closed form
        ``lpfast.row_doped.n_params_formula``.
        """
        return int(sum(a.size for a in self._arrays().values()))

    @property
    def compression_ratio(self) -> float:
        """``n * d / n_params``."""
        return self.shape[0] * self.shape[1] / self.n_params

    @property
    def rest_indices(self) -> np.ndarray:
        """Rows served by the factorization (not stored exactly), increasing; int64 (n - R,)."""
        keep = np.ones(self.shape[0], dtype=bool)
        keep[self.exact_indices] = False
        return np.flatnonzero(keep).astype(np.int64)

    # -- evaluation --

    def _factor_rows(self, t: np.ndarray) -> np.ndarray:
        if self.U is not None:
            return self.U[t] @ self.Vt
        out = np.empty((t.shape[0], self.shape[1]), dtype=self.dtype)
        lab = self.labels[t]
        for c in range(self.bases.shape[0]):
            sel = np.flatnonzero(lab == c)
            if sel.size:
                out[sel] = self.coefficients[t[sel]] @ self.bases[c].T
        return out

    def reconstruct(self) -> np.ndarray:
        """The approximation of E, shape (n, d), E's dtype. O(n d k) (low rank) or
        O(n d j) (projective)."""
        out = np.empty(self.shape, dtype=self.dtype)
        out[self.rest_indices] = self._factor_rows(np.arange(self.shape[0] - self.n_exact))
        out[self.exact_indices] = self.exact_rows
        return out

    def lookup(self, ids: Any) -> np.ndarray:
        """Rows ``ids`` of the reconstruction, shape ``ids.shape + (d,)``: the semantics of
        an embedding layer built from this result (the NumPy version of the torch layer).

        Exact ids return their stored row; any other id i reads factor row
        ``t = i - searchsorted(exact_indices, i)``. O(len(ids) * (log R + d k)).
        """
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            msg = f"ids: expected an integer array, got dtype {ids.dtype}"
            raise TypeError(msg)
        flat = ids.reshape(-1).astype(np.int64)
        n = self.shape[0]
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            msg = f"ids: expected values in [0, {n}), got range [{flat.min()}, {flat.max()}]"
            raise ValueError(msg)
        pos = np.searchsorted(self.exact_indices, flat)
        is_exact = np.zeros(flat.shape[0], dtype=bool)
        if self.n_exact:
            is_exact = self.exact_indices[np.minimum(pos, self.n_exact - 1)] == flat
        out = np.empty((flat.shape[0], self.shape[1]), dtype=self.dtype)
        out[is_exact] = self.exact_rows[pos[is_exact]]
        rest = ~is_exact
        out[rest] = self._factor_rows(flat[rest] - pos[rest])
        return out.reshape(*ids.shape, self.shape[1])

    # -- plain-array state --

    def to_dict(self) -> dict[str, Any]:
        """Plain state: NumPy arrays (the stored numbers) and Python scalars (metadata).

        Keys: ``format`` ("lpfast.row_doped"), ``version`` (1), ``method``, ``p``, ``n_rows``,
        ``n_cols``, ``rank``, ``n_subspaces``, ``error``, ``cost``, ``budget`` (int or
        None), and the arrays ``exact_indices`` (int64, (R,)), ``exact_rows`` ((R, d)), then
        ``U`` ((n-R, k)), ``Vt`` ((k, d)) for low rank, or ``labels`` (int64, (n-R,)),
        ``coefficients`` ((n-R, j)), ``bases`` ((K, d, j)) for projective. The arrays are
        the result's own (not copies); their sizes sum to ``n_params``.
        """
        state: dict[str, Any] = {
            "format": _FORMAT, "version": _VERSION, "method": self.method, "p": self.p,
            "n_rows": self.shape[0], "n_cols": self.shape[1], "rank": self.rank,
            "n_subspaces": self.n_subspaces, "error": self.error, "cost": self.cost,
            "budget": self.budget,
        }
        state.update(self._arrays())
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RowDoped:
        """Rebuild from :meth:`to_dict` output (arrays may be torch tensors); validated:
        ``ValueError``/``TypeError`` naming the offending key."""
        if not isinstance(state, dict):
            msg = f"state: expected a dict from RowDoped.to_dict(), got {type(state).__name__}"
            raise TypeError(msg)

        def get(key):
            if key not in state:
                msg = f"state: missing key {key!r}"
                raise ValueError(msg)
            return state[key]

        if get("format") != _FORMAT:
            msg = f"state['format']: expected {_FORMAT!r}, got {state['format']!r}"
            raise ValueError(msg)
        method = get("method")
        if method not in METHODS:
            msg = f"state['method']: expected one of {METHODS}, got {method!r}"
            raise ValueError(msg)
        n = as_int(get("n_rows"), "state['n_rows']", low=1)
        d = as_int(get("n_cols"), "state['n_cols']", low=1)
        rank = as_int(get("rank"), "state['rank']", low=1)
        K = as_int(get("n_subspaces"), "state['n_subspaces']", low=1)
        kind = kind_of(method)

        def ints(key, length, high):
            a = get(key)
            a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
            if a.dtype.kind not in "iu" or a.ndim != 1 or a.shape[0] != length:
                msg = f"state[{key!r}]: expected an integer array of shape ({length},), got " \
                      f"{a.dtype} {a.shape}"
                raise ValueError(msg)
            if a.size and (a.min() < 0 or a.max() >= high):
                msg = f"state[{key!r}]: values must lie in [0, {high})"
                raise ValueError(msg)
            return np.ascontiguousarray(a, dtype=np.int64)

        rows = get("exact_rows")
        dtype = float_dtype_of(rows.detach().cpu().numpy() if hasattr(rows, "detach") else rows,
                               "state['exact_rows']") or np.dtype(np.float64)

        def floats(key, shape):
            a = as_float_array(get(key), f"state[{key!r}]", dtype)
            if a.shape != shape:
                msg = f"state[{key!r}]: expected shape {shape}, got {a.shape}"
                raise ValueError(msg)
            return a

        exact_rows = as_float_array(rows, "state['exact_rows']", dtype, ndim=2)
        R = exact_rows.shape[0]
        if exact_rows.shape[1] != d or R > n:
            msg = f"state['exact_rows']: expected shape (R <= {n}, {d}), got {exact_rows.shape}"
            raise ValueError(msg)
        exact = ints("exact_indices", R, n)
        if R > 1 and not (np.diff(exact) > 0).all():
            msg = "state['exact_indices']: must be strictly increasing"
            raise ValueError(msg)
        parts: dict[str, Any] = {}
        if kind == "lowrank":
            parts["U"] = floats("U", (n - R, rank))
            parts["Vt"] = floats("Vt", (rank, d))
        else:
            parts["labels"] = ints("labels", n - R, K)
            parts["coefficients"] = floats("coefficients", (n - R, rank))
            parts["bases"] = floats("bases", (K, d, rank))
        budget = state.get("budget")
        return cls(method=method, p=as_float(state.get("p", 2.0), "state['p']", low=1.0),
                   shape=(n, d), rank=rank, n_subspaces=K, exact_indices=exact,
                   exact_rows=exact_rows, error=float(state.get("error", float("nan"))),
                   cost=float(state.get("cost", float("nan"))),
                   budget=None if budget is None else int(budget), **parts)

    def __repr__(self) -> str:
        n, d = self.shape
        sub = f", n_subspaces={self.n_subspaces}" if self.method == "projective" else ""
        return (f"RowDoped(method={self.method!r}, p={self.p:g}, shape=({n}, {d}), "
                f"rank={self.rank}{sub}, n_exact={self.n_exact}, n_params={self.n_params}, "
                f"ratio={self.compression_ratio:.2f}, error={self.error:.6g}, "
                f"dtype={self.dtype})")
