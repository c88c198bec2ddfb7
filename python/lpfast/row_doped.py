"""Row doping: a low-rank or k-subspace factorization plus a few rows stored exactly.

In vocabulary embeddings the rows a model uses most (frequent tokens, special tokens,
punctuation) are often the rows farthest from the dominant subspace. A fit that weights
rows by usage (``usage_weights``) and stores the worst-served heavy rows exactly, refitting
the factorization without them, serves them all at the same parameter budget. This is the
doping idea of Thakker et al. (arXiv 2102.07071: W = A ⊗ B + S with S sparse) with S made of
whole rows, applied to low-rank (Tukan et al., arXiv 2009.05647) and projective (Maalouf et
al., arXiv 2010.04290) factorizations.

``row_doped_fit`` returns a :class:`RowDoped`: ``reconstruct()``, ``lookup(ids)`` (the
embedding-layer semantics a torch layer must reproduce), the exact parameter count and a
plain-array ``to_dict()`` / ``RowDoped.from_dict()``.
"""


from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._row_doping import (Effort, SplitResult, build_result, grid_extender, kind_of,
                          make_fitter, max_exact, max_rank, min_budget, n_params_formula,
                          rank_cap, search_splits, split_history, splits_for)
from ._validate import (as_choice, as_float, as_float_array, as_fractions, as_int, as_matrix,
                        as_row_weights, float_dtype_of)
from .usage import usage_weights  # re-exported: it was defined here first

__all__ = ["RowDoped", "row_doped_fit", "usage_weights"]

METHODS = ("svd", "lp", "projective")
#: Share of the budget spent on exact rows tried by the split search (0 = no doping).
DEFAULT_EXACT_FRACTIONS = (0.0, 0.0625, 0.125, 0.25, 0.5)
_FORMAT = "lpfast.row_doped"
_VERSION = 1
_ARRAYS = {
    "lowrank": ("exact_indices", "exact_rows", "U", "Vt"),
    "projective": ("exact_indices", "exact_rows", "labels", "coefficients", "bases"),
}



# -- the result ------------------------------------------------------------------------------

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


def _check_method(method: Any, p: float) -> str:
    as_choice(method, "method", METHODS, type_error=False)
    if method == "svd" and p != 2.0:
        msg = f"p: method 'svd' is the p = 2 fit, got p={p}; use method='lp' for p != 2"
        raise ValueError(msg)
    return method



def row_doped_fit(E: Any, method: str, budget: int, *, weights: Any = None, p: float = 2.0,
                  rank: int | None = None, n_exact: int | None = None,
                  n_subspaces: int | None = None, seed: Any = None, n_rounds: int = 2,
                  exact_fractions: Any = DEFAULT_EXACT_FRACTIONS, max_iter: int = 100,
                  extend_grid: bool = True, tol: float = 1e-6, n_init: int = 10,
                  verbose: bool = False) -> RowDoped:
    """Represent E as a factorization plus R rows stored exactly, within a parameter budget.

    Rows are chosen by weighted residual ``w_i * ||e_i - ê_i||^2``: the R largest are
    stored exactly, the factorization is refit with their weights set to 0, the R rows are
    chosen again from the new residuals, and so on for ``n_rounds`` refits (or until the
    choice repeats); the round with the lowest weighted error is kept. The first refit also
    leaves out the R heaviest rows (largest ``w_i ||e_i||^2``): a heavy row far from the
    bulk pulls the first fit towards itself, which hides its residual.

    Parameters
    ----------
    E : array_like, shape (n, d)
        The matrix (embedding table, or a Linear weight of shape (out, in): its rows are the
        output units). float32 or float64 (kept; integers -> float64); any layout
        (converted once to C order when needed); never modified, never copied otherwise.
    method : {"svd", "lp", "projective"}
        The factorization of the non-exact rows: ``"svd"`` the weighted rank-k SVD basis;
        ``"lp"`` the rank-k lp subspace (:func:`lpfast.lp_subspace`, IRLS); for both,
        ``E ≈ U Vt`` with ``U = E V``. ``"projective"``: ``n_subspaces`` subspaces of
        dimension j (:func:`lpfast.k_subspaces`), each row projected on its nearest one.
    budget : int
        Most numbers to store (see Notes): e.g. ``n * d // ratio``.
    weights : array_like, shape (n,), optional
        Non-negative row weights (default 1), e.g. ``usage_weights(counts)``; used by the
        fits, the choice of exact rows and the reported error.
    p : float >= 1
        Exponent of the fitted cost, for ``"lp"`` and ``"projective"``; must be 2 for "svd".
    rank : int, optional
        k (low rank) or j (projective). With ``n_exact`` too: that split exactly (it must
        fit the budget). Alone: R = as many exact rows as the rest of the budget pays for.
    n_exact : int, optional
        R. Alone: the largest rank that fits with R exact rows.
    n_subspaces : int, optional
        K for ``"projective"`` (required there; not allowed otherwise).
    seed : int, numpy Generator or None
        Seed of the k-subspace restarts (projective); low-rank fits are deterministic.
    n_rounds : int >= 0
        Refits without the exact rows per split (0: choose rows once from the first fit).
    exact_fractions : sequence of float in [0, 1]
        With neither ``rank`` nor ``n_exact``: the split search. For each fraction f,
        ``R = floor(f * budget / (d + 1))``, the largest rank that fits, then R raised to
        use what the budget has left. The split with the lowest weighted error wins;
        fraction 0 (no doping, the largest rank) is in the default grid, so the result is
        never worse than the undoped fit of the same budget.
    extend_grid : bool
        While the best split with exact rows is at an end of the ``exact_fractions`` grid,
        also try the fraction halfway to 1 (or half the smallest): up to 3 more splits.
    max_iter, tol : int, float
        IRLS steps (``"lp"``) / Lloyd iterations (``"projective"``) and relative tolerance
        of each fit.
    n_init : int >= 1
        Restarts of the first k-subspace fit (projective).
    verbose : bool
        Print each split's result to stderr.

    Returns
    -------
    RowDoped
        ``reconstruct()``, ``lookup(ids)``, ``n_params``, ``error`` (weighted relative),
        ``cost`` (lp), ``to_dict()`` / ``RowDoped.from_dict()``.

    Raises
    ------
    ValueError
        Bad shapes, NaN/Inf, wrong ``weights`` length, a ``budget`` too small for rank 1
        (or for the given split), ``rank``/``n_exact``/``n_subspaces`` out of range.
    TypeError
        Non-integer budget, rank, n_exact.

    Notes
    -----
    Parameter count (every index and label counts as one number), with R exact rows:
    low rank ``(n - R) k + k d + R (d + 1)``; projective ``(n - R)(j + 1) + K d j +
    R (d + 1)``. An exact row costs ``d + 1`` and saves ``k`` (``j + 1``).

    Cost: one fit at the largest rank (``"svd"``: one weighted Gram, O(n d^2); ``"lp"``:
    O(n d^2) per IRLS step; projective: O(n d K j + n d^2) per Lloyd iteration), then per
    split up to ``n_rounds`` warm-started refits at the split's rank plus one O(n d k)
    residual pass per round and an O(n log n) sort. Later splits start from the first fit
    truncated to their rank (its leading columns). Deterministic for a seed and thread count.
    """
    E = as_matrix(E, "E", min_rows=2, min_cols=2)  # own float dtype, else float64
    n, d = E.shape
    p = as_float(p, "p", low=1.0)
    method = _check_method(method, p)
    kind = kind_of(method)
    if method == "projective":
        if n_subspaces is None:
            msg = "n_subspaces: required for method='projective'"
            raise ValueError(msg)
        K = as_int(n_subspaces, "n_subspaces", low=1, high=n)
    else:
        if n_subspaces is not None and n_subspaces != 1:
            msg = f"n_subspaces: only for method='projective', got {n_subspaces!r}"
            raise ValueError(msg)
        K = 1
    budget = as_int(budget, "budget", low=1)
    least = min_budget(kind, n, d, K)
    if budget < least:
        msg = (f"budget: {budget} is too small for method={method!r} on a {n} x {d} matrix; "
               f"rank 1 needs {least}")
        raise ValueError(msg)
    w = as_row_weights(weights, n, rows="E", ones=True)
    n_rounds = as_int(n_rounds, "n_rounds", low=0)
    max_iter = as_int(max_iter, "max_iter", low=1)
    tol = as_float(tol, "tol", low=0.0)
    n_init = as_int(n_init, "n_init", low=1)
    cap = rank_cap(kind, n, d, 0, K)
    if rank is not None:
        rank = as_int(rank, "rank", low=1, high=cap)
    if n_exact is not None:
        n_exact = as_int(n_exact, "n_exact", low=0, high=n - 1)

    extend = None
    if rank is not None and n_exact is not None:
        need = n_params_formula(method, n, d, rank, n_exact, K)
        if need > budget:
            msg = (f"budget: {budget} is too small for rank={rank} with n_exact={n_exact} "
                   f"(needs {need})")
            raise ValueError(msg)
        splits = [(rank, n_exact)]
    elif rank is not None:
        R = min(max_exact(kind, n, d, budget, rank, K), n - 1)
        if R < 0:
            need = n_params_formula(method, n, d, rank, 0, K)
            msg = f"budget: {budget} is too small for rank={rank} (needs {need})"
            raise ValueError(msg)
        splits = [(rank, R)]
    elif n_exact is not None:
        k = min(max_rank(kind, n, d, budget, n_exact, K), cap)
        if k < 1:
            need = n_params_formula(method, n, d, 1, n_exact, K)
            msg = f"budget: {budget} is too small for n_exact={n_exact} at rank 1 (needs {need})"
            raise ValueError(msg)
        splits = [(k, n_exact)]
    else:
        fractions = as_fractions(exact_fractions, "exact_fractions")
        splits = splits_for(kind, n, d, budget, K, fractions)
        extend = grid_extender(kind, n, d, budget, K, fractions) if extend_grid else None
        if not splits:
            msg = f"budget: {budget} leaves no split of exact_fractions with rank >= 1"
            raise ValueError(msg)

    sq = w * np.einsum("ij,ij->i", E, E, dtype=np.float64)
    total = float(sq.sum())
    heavy = np.argsort(-sq, kind="stable")
    effort = Effort(max_iter, tol, max_iter, n_init)
    fitter = make_fitter(E, w, method, p, K, effort, seed)

    def report(res: SplitResult) -> None:
        if verbose:
            print(f"row_doped_fit[{method}]: rank {res.rank:4d}  exact rows {res.n_exact:6d}  "
                  f"error {res.error:.6g}  ({res.seconds:.2f} s)", file=sys.stderr, flush=True)

    results = search_splits(fitter, w, heavy, total, splits, n_rounds, report, extend)
    best = min(results, key=lambda r: r.error)  # first of equals: the earlier split
    return build_result(E, w, method, p, K, best, budget, split_history(method, n, d, K, results))
