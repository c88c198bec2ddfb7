"""Shared machinery of row doping and the planner: parameter accounting, the per-kind
fitters, the split search between rank and exact rows, and building the result.

Internal, made for sharing: :mod:`lpfast.row_doped` and :mod:`lpfast.planner` import what
it shares (the names without a leading underscore); nothing here is public API, and every
argument arrives validated (``_validate``).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from . import _native
from ._validate import default_eps
from .row_doped_result import RowDoped, kind_of

# -- parameter accounting --------------------------------------------------------------------

def n_params_formula(method: str, n: int, d: int, rank: int, n_exact: int,
                     n_subspaces: int = 1) -> int:
    """Numbers stored by a row-doped factorization of an (n, d) matrix.

    Low rank (``"svd"``, ``"lp"``): ``(n - R) * k + k * d + R * (d + 1)`` (U for the
    non-exact rows, Vt, the exact rows' values and their indices). Projective:
    ``(n - R) * (j + 1) + K * d * j + R * (d + 1)`` (a label and j coefficients per
    non-exact row, K bases of shape (d, j), exact rows and indices). Every index and label
    counts as one number, as every value does.
    """
    if kind_of(method) == "lowrank":
        return (n - n_exact) * rank + rank * d + n_exact * (d + 1)
    return (n - n_exact) * (rank + 1) + n_subspaces * d * rank + n_exact * (d + 1)


def max_rank(kind: str, n: int, d: int, budget: int, R: int, K: int) -> int:
    """Largest rank (k or j) with n_params <= budget at R exact rows (may be < 1)."""
    left = budget - R * (d + 1)
    if kind == "lowrank":
        return left // (n - R + d) if left >= 0 else -1
    left -= n - R
    return left // (n - R + K * d) if left >= 0 else -1


def rank_cap(kind: str, n: int, d: int, R: int, K: int) -> int:
    if kind == "lowrank":
        return min(d, n)
    return min(d - 1, n // K)


def max_exact(kind: str, n: int, d: int, budget: int, rank: int, K: int) -> int:
    """Largest R with n_params <= budget at this rank (may be < 0)."""
    if kind == "lowrank":
        fixed, per_row = n * rank + rank * d, d + 1 - rank
    else:
        fixed, per_row = n * (rank + 1) + K * d * rank, d - rank
    left = budget - fixed
    if left < 0:
        return -1
    return n if per_row <= 0 else min(n, left // per_row)


def min_budget(kind: str, n: int, d: int, K: int) -> int:
    return n_params_formula("projective" if kind == "projective" else "svd", n, d, 1, 0, K)


# -- fitters: one per kind, over validated arrays ----------------------------------------------

class LowRankFitter:
    """Fits and scores orthonormal bases V (d, k); state = V."""

    def __init__(self, E: np.ndarray, w: np.ndarray, method: str, p: float, max_iter: int,
                 tol: float, refit_iter: int):
        self.E, self.w, self.method, self.p = E, w, method, p
        self.max_iter, self.tol, self.refit_iter = max_iter, tol, refit_iter

    def fit(self, rank: int, w_fit: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        wx = np.ascontiguousarray(w_fit, dtype=self.E.dtype)
        if self.method == "svd":
            return _native.weighted_pca(X=self.E, weights=wx, k=rank)
        from .subspace import lp_subspace

        if init is None:
            return lp_subspace(self.E, rank, self.p, weights=wx, max_iter=self.max_iter,
                               tol=self.tol).basis
        return lp_subspace(self.E, rank, self.p, weights=wx, init=init,
                           max_iter=self.refit_iter, tol=self.tol).basis

    @staticmethod
    def truncate(V: np.ndarray, rank: int) -> np.ndarray:
        return np.ascontiguousarray(V[:, :rank])

    def residuals(self, V: np.ndarray) -> tuple[np.ndarray, Any]:
        dist = _native.subspace_distances(X=self.E, basis=V).astype(np.float64)
        return dist * dist, None


class ProjectiveFitter:
    """Fits and scores k-subspace bases (K, d, j); state = bases."""

    def __init__(self, E: np.ndarray, w: np.ndarray, K: int, p: float, n_init: int,
                 max_iter: int, tol: float, refit_iter: int, seed: Any):
        self.E, self.w, self.K, self.p = E, w, K, p
        self.n_init, self.max_iter, self.tol, self.refit_iter = n_init, max_iter, tol, refit_iter
        self.seed = seed
        self.eps = default_eps(E, w)  # k_subspaces' default for the full weights

    def fit(self, rank: int, w_fit: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        from .projective import k_subspaces

        if init is None:
            res = k_subspaces(self.E, self.K, rank, self.p, weights=w_fit, n_init=self.n_init,
                              max_iter=self.max_iter, tol=self.tol, eps=self.eps,
                              seed=self.seed)
            return res.bases
        # A warm refit: the arguments are validated already; calling the kernel directly
        # skips k_subspaces' checks and its coefficients (residuals() assigns again).
        fit = _native.k_subspaces_fit(
            X=self.E, weights=np.ascontiguousarray(w_fit, dtype=np.float64), n_subspaces=self.K,
            dim=rank, p=self.p, max_iter=self.refit_iter, tol=self.tol, eps=self.eps,
            irls_steps=3, seeding="dp", n_init=1, seed=0, init_bases=np.ascontiguousarray(init))
        return np.asarray(fit.bases)

    @staticmethod
    def truncate(B: np.ndarray, rank: int) -> np.ndarray:
        return np.ascontiguousarray(B[:, :, :rank])

    def residuals(self, B: np.ndarray) -> tuple[np.ndarray, Any]:
        labels, dist2, coef = _native.k_subspaces_assign(X=self.E, bases=B)
        return np.maximum(np.asarray(dist2, dtype=np.float64), 0.0), (labels, coef)


class SplitResult:
    __slots__ = ("rank", "n_exact", "state", "exact", "aux", "r2", "error", "round_errors",
                 "seconds")

    def __init__(self, rank, n_exact, state, exact, aux, r2, error, round_errors, seconds):
        self.rank, self.n_exact, self.state, self.exact, self.aux = rank, n_exact, state, exact, aux
        self.r2, self.error, self.round_errors, self.seconds = r2, error, round_errors, seconds


def top_rows(score: np.ndarray, R: int) -> np.ndarray:
    """Sorted indices of the R largest scores (ties to the lowest index)."""
    if R == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-score, kind="stable")[:R]
    return np.sort(order).astype(np.int64)


def dope_rounds(fitter, w: np.ndarray, total: float, rank: int, R: int, state: np.ndarray,
            n_rounds: int, heavy: np.ndarray | None = None) -> SplitResult:
    """Alternate: exact rows = top-R weighted residuals; refit without them. Keep the best.

    Round 0 scores ``state`` as given. The first refit leaves out those R rows *and* the R
    heaviest rows (``heavy``: rows by decreasing ``w_i ||e_i||^2``): a heavy row far from
    the bulk pulls a fit towards itself, so its residual (and its chance to be stored
    exactly) is small while it costs the bulk a direction; fitted without it, the bulk
    shows its residual. Later refits leave out the current exact rows.
    """
    t0 = time.perf_counter()
    best: SplitResult | None = None
    prev = None
    errors = []
    for rnd in range(n_rounds + 1):
        r2, aux = fitter.residuals(state)
        score = w * r2
        exact = top_rows(score, R)
        keep = np.ones(score.shape[0], dtype=bool)
        keep[exact] = False
        err = math.sqrt(max(float(score[keep].sum()), 0.0) / total) if total > 0 else 0.0
        errors.append(err)
        if best is None or err < best.error:
            best = SplitResult(rank, R, state, exact, aux, r2, err, errors, 0.0)
        if R == 0 or rnd == n_rounds or (prev is not None and np.array_equal(prev, exact)):
            break
        prev = exact
        w_fit = w.copy()
        w_fit[exact] = 0.0
        if rnd == 0 and heavy is not None:
            w_fit[heavy[:R]] = 0.0
            prev = None  # the next choice is not a repeat of this refit's
        if not w_fit.sum() > 0:
            break
        state = fitter.fit(rank, w_fit, init=state)
    best.round_errors = errors
    best.seconds = time.perf_counter() - t0
    return best


def splits_for(kind: str, n: int, d: int, budget: int, K: int,
            fractions: tuple[float, ...]) -> list[tuple[int, int]]:
    """(rank, n_exact) pairs: R from each budget fraction, the largest rank that fits, then
    (for R > 0) as many more exact rows as the rest of the budget pays for."""
    out: list[tuple[int, int]] = []
    for f in fractions:
        R = int(f * budget) // (d + 1)
        rank = max_rank(kind, n, d, budget, R, K)
        rank = min(rank, rank_cap(kind, n, d, R, K))
        if rank < 1:
            continue
        if R > 0:
            R = min(max_exact(kind, n, d, budget, rank, K), n - 1)
        if R >= 0 and (rank, R) not in out:
            out.append((rank, R))
    return out


# -- the split search -------------------------------------------------------------------------

class Effort:
    """Iteration settings of one fit: full (row_doped_fit defaults) or screening (planner)."""

    __slots__ = ("max_iter", "tol", "refit_iter", "n_init")

    def __init__(self, max_iter: int = 100, tol: float = 1e-6, refit_iter: int = 100,
                 n_init: int = 10):
        self.max_iter, self.tol, self.refit_iter, self.n_init = max_iter, tol, refit_iter, n_init


def make_fitter(E, w, method, p, K, effort: Effort, seed):
    if method == "projective":
        return ProjectiveFitter(E, w, K, p, effort.n_init, effort.max_iter, effort.tol,
                                 effort.refit_iter, seed)
    return LowRankFitter(E, w, method, p, effort.max_iter, effort.tol, effort.refit_iter)


def search_splits(fitter, w: np.ndarray, heavy: np.ndarray, total: float,
            splits: list[tuple[int, int]], n_rounds: int,
            report: Callable[[SplitResult], Any] | None = None,
            extend: Callable[[list[SplitResult]], tuple[int, int] | None] | None = None,
            ) -> list[SplitResult]:
    """Fit once at the largest rank of ``splits``, then run ``n_rounds`` doping rounds per
    split, each starting from that fit truncated to the split's rank (leading columns).
    ``extend(results)`` may return one more split to try (None: done)."""
    top = max(rank for rank, _ in splits)
    t0 = time.perf_counter()
    start = fitter.fit(top, w)
    fit_seconds = time.perf_counter() - t0
    out: list[SplitResult] = []
    todo = list(splits)
    while todo:
        rank, R = todo.pop(0)
        state = start if rank == top else fitter.truncate(start, rank)
        if R == 0 and rank != top:
            state = fitter.fit(rank, w, init=state)
        res = dope_rounds(fitter, w, total, rank, R, state, n_rounds, heavy)
        if rank == top and R == 0:
            res.seconds += fit_seconds
        out.append(res)
        if report is not None:
            report(res)
        if not todo and extend is not None:
            nxt = extend(out)
            if nxt is not None:
                todo.append(nxt)
    if all(not (rank == top and R == 0) for rank, R in splits):
        out[0].seconds += fit_seconds  # the shared start fit is charged to the first split
    return out


def grid_extender(kind: str, n: int, d: int, budget: int, K: int, fractions: tuple[float, ...],
              max_steps: int = 3) -> Callable[[list[SplitResult]], tuple[int, int] | None]:
    """Widen the split grid while its best doped split sits at an end: try halfway from the
    largest fraction to 1, or half the smallest; at most ``max_steps`` extra splits."""
    tried = {}  # (rank, R) -> fraction
    for f in fractions:
        for split in splits_for(kind, n, d, budget, K, (f,)):
            tried.setdefault(split, f)
    steps = [0]

    def extend(results: list[SplitResult]) -> tuple[int, int] | None:
        doped = [r for r in results if r.n_exact > 0 and (r.rank, r.n_exact) in tried]
        if not doped or steps[0] >= max_steps:
            return None
        best = min(doped, key=lambda r: r.error)
        fb = tried[(best.rank, best.n_exact)]
        fs = [tried[(r.rank, r.n_exact)] for r in doped]
        if fb >= max(fs):
            f = (fb + 1.0) / 2
        elif fb <= min(fs) and fb > 1 / 256:
            f = fb / 2
        else:
            return None
        new = [sp for sp in splits_for(kind, n, d, budget, K, (f,)) if sp[1] > 0]
        if not new or new[0] in tried:
            return None
        tried[new[0]] = f
        steps[0] += 1
        return new[0]

    return extend


def build_result(E: np.ndarray, w: np.ndarray, method: str, p: float, K: int, res: SplitResult,
           budget: int | None, history: list[dict[str, Any]]) -> Any:
    n, d = E.shape
    exact = res.exact
    keep = np.ones(n, dtype=bool)
    keep[exact] = False
    cost = float(w[keep] @ (res.r2[keep] ** (p / 2)))
    common = dict(method=method, p=p, shape=(n, d), rank=res.rank, n_subspaces=K,
                  exact_indices=exact, exact_rows=E[exact], error=res.error, cost=cost,
                  budget=budget, history=history)
    if method == "projective":
        labels, coef = res.aux
        return RowDoped(labels=np.ascontiguousarray(labels[keep], dtype=np.int64),
                        coefficients=np.ascontiguousarray(coef[keep]),
                        bases=np.ascontiguousarray(res.state), **common)
    V = res.state
    U = E @ V
    return RowDoped(U=np.ascontiguousarray(U[keep]) if exact.size else U,
                    Vt=np.ascontiguousarray(V.T), **common)


def split_history(method, n, d, K, results: list[SplitResult]) -> list[dict[str, Any]]:
    return [{"rank": r.rank, "n_exact": r.n_exact,
             "n_params": n_params_formula(method, n, d, r.rank, r.n_exact, K),
             "error": r.error, "round_errors": list(r.round_errors), "seconds": r.seconds}
            for r in results]
