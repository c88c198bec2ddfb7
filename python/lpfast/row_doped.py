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
plain-array ``to_dict()`` / ``RowDoped.from_dict()`` (:mod:`lpfast.row_doped_result`).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._row_doping import (Effort, SplitResult, build_result, grid_extender, make_fitter,
                          max_exact, max_rank, min_budget, n_params_formula, rank_cap,
                          search_splits, split_history, splits_for)
from ._validate import (as_choice, as_float, as_fractions, as_int, as_matrix, as_row_weights,
                        scale_exponent)
from .row_doped_result import METHODS, RowDoped, kind_of
from .usage import usage_weights  # re-exported: it was defined here first

__all__ = ["RowDoped", "row_doped_fit", "usage_weights"]

#: Share of the budget spent on exact rows tried by the split search (0 = no doping).
DEFAULT_EXACT_FRACTIONS = (0.0, 0.0625, 0.125, 0.25, 0.5)


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
    if E.dtype == np.float32 and scale_exponent(E, p) != 0:
        # The split search squares float32 rows in its distance and PCA kernels: outside
        # float32's safe range they under- or overflow (a silent error 0 at 2**-100), so such
        # an E is fitted in float64 (one copy) and the result stored back in float32.
        fit = row_doped_fit(E.astype(np.float64), method, budget, weights=weights, p=p,
                            rank=rank, n_exact=n_exact, n_subspaces=n_subspaces, seed=seed,
                            n_rounds=n_rounds, exact_fractions=exact_fractions,
                            max_iter=max_iter, extend_grid=extend_grid, tol=tol,
                            n_init=n_init, verbose=verbose)
        state = fit.to_dict()
        for key, value in state.items():
            if isinstance(value, np.ndarray) and value.dtype == np.float64:
                state[key] = value.astype(np.float32)
        state["exact_rows"] = E[state["exact_indices"]]  # exact, as stored rows must be
        return RowDoped.from_dict(state)
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
