"""Projective clustering: k subspaces of dimension j, each row on its nearest one.

``k_subspaces`` minimizes ``sum_i w_i * min_c dist(x_i, V_c)^p`` over k orthonormal bases
V_c of shape (d, j) (Maalouf, Lang, Rus, Feldman, "Deep Learning Meets Projective
Clustering", arXiv 2010.04290). The compressed layer keeps, per row, its label and the j
coefficients ``V_label^T x``, plus the k bases: ``n*j + k*d*j`` numbers instead of ``n*d``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native
from ._validate import (as_choice, as_float, as_scaled_eps, as_float_array, as_generator, as_int,
                        as_matrix, as_ndarray, as_p, as_row_weights, as_rows, common_float_dtype,
                        default_eps, orthonormal_columns, scale_exponent, scaled, unscaled)

__all__ = ["KSubspaces", "k_subspaces"]

_SEEDINGS = ("coreset", "dp", "random")
#: RNG stream of the coreset's pilot seeding (restarts use streams 0 .. n_init - 1).
_PILOT_STREAM = 2**40



class KSubspaces:
    """Result of :func:`k_subspaces`.

    Attributes
    ----------
    labels : ndarray of int64, shape (n,)
        Subspace of each row of X (the nearest one; ties go to the lowest index).
    bases : ndarray, shape (k, d, j), X's dtype
        Orthonormal bases; columns ordered by decreasing eigenvalue of the cluster's
        (weighted) Gram matrix, each column's largest-magnitude entry positive.
    cost : float
        ``sum_i w_i * dist(x_i, V_label_i)^p`` on X.
    n_iter : int
        Lloyd iterations of the final run (on all of X).
    history : ndarray of float64
        Cost of the final run's start, then after each iteration (``min(history) == cost``).
    p : float
    seeding : str
    fit_info : dict
        ``restart`` (index of the best restart), ``eps``, and with coreset seeding
        ``coreset_indices``, ``coreset_weights``, ``coreset_cost``, ``coreset_history``.
    """

    __slots__ = ("labels", "bases", "cost", "n_iter", "history", "p", "seeding", "fit_info",
                 "_coef")

    def __init__(self, labels: np.ndarray, bases: np.ndarray, cost: float, n_iter: int,
                 history: np.ndarray, p: float, seeding: str, fit_info: dict[str, Any],
                 coef: np.ndarray):
        self.labels = labels
        self.bases = bases
        self.cost = cost
        self.n_iter = n_iter
        self.history = history
        self.p = p
        self.seeding = seeding
        self.fit_info = fit_info
        self._coef = coef

    @property
    def n_subspaces(self) -> int:
        return self.bases.shape[0]

    @property
    def dim(self) -> int:
        return self.bases.shape[2]

    def __repr__(self) -> str:
        k, d, j = self.bases.shape
        return (f"KSubspaces(n={self.labels.shape[0]}, d={d}, n_subspaces={k}, dim={j}, "
                f"p={self.p}, cost={self.cost:.6g}, n_iter={self.n_iter}, "
                f"seeding={self.seeding!r}, dtype={self.bases.dtype})")

    def _assign(self, Y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(labels, distances, coefficients, Y was one row) of the rows of Y."""
        if not hasattr(Y, "ndim"):
            Y = as_ndarray(Y, "Y")  # a ragged list must fail by name, not in np.ndim
        one = Y.ndim == 1
        common_float_dtype({"bases": self.bases, "Y": Y})  # float32 with float64: TypeError
        rows = as_rows(Y, "Y", self.bases.shape[1], self.bases.dtype, single=True)
        e = scale_exponent(rows)  # as in k_subspaces: squares of float32 rows at 1e30 overflow
        labels, dist2, coef = _native.k_subspaces_assign(X=scaled(rows, e), bases=self.bases)
        dist = np.sqrt(dist2)
        if e:
            dist, coef = np.ldexp(dist, e), np.ldexp(coef, e)
        return labels, dist, coef, one

    def predict(self, Y: Any) -> np.ndarray:
        """Index of the nearest subspace for each row of Y (shape (m, d) or (d,))."""
        labels, _, _, one = self._assign(Y)
        return labels[0] if one else labels

    def distances(self, Y: Any) -> np.ndarray:
        """Distance of each row of Y to its nearest subspace."""
        _, dist, _, one = self._assign(Y)
        return dist[0] if one else dist

    def coefficients(self, Y: Any = None) -> np.ndarray:
        """The j numbers each row keeps: ``V_c^T y`` for its nearest subspace c.

        ``Y=None`` gives those of the fitted X (with c = ``labels``), shape (n, j).
        """
        if Y is None:
            return self._coef.copy()
        _, _, coef, one = self._assign(Y)
        return coef[0] if one else coef

    def reconstruct(self, Y: Any = None) -> np.ndarray:
        """Rows projected onto their nearest subspace, ``V_c V_c^T y`` (default: the fitted X).

        For X this is the compressed layer's weights: ``labels``, ``coefficients()`` and
        ``bases`` hold everything needed.
        """
        if Y is None:
            labels, coef = self.labels, self._coef
            one = False
        else:
            labels, _, coef, one = self._assign(Y)
        out = np.empty((labels.shape[0], self.bases.shape[1]), dtype=self.bases.dtype)
        for c in range(self.bases.shape[0]):
            idx = np.flatnonzero(labels == c)
            out[idx] = coef[idx] @ self.bases[c].T
        return out[0] if one else out


# Relative cost decrease at which the coreset restarts stop (the user's tol, if looser), and
# their IRLS steps per Lloyd iteration (p != 2).
_CORESET_TOL = 1e-3
_CORESET_IRLS_STEPS = 1


def _coreset(X: np.ndarray, w: np.ndarray, k: int, j: int, p: float, size: int,
             rng: np.random.Generator, core_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) of a sensitivity sample of ``size`` draws (duplicates merged)."""
    pilot = _native.k_subspaces_seed(X=X, weights=w, n_subspaces=k, dim=j, p=p, seeding="dp",
                                     seed=core_seed, stream=_PILOT_STREAM)
    labels, dist2, _ = _native.k_subspaces_assign(X=X, bases=pilot)
    cost_i = w * np.maximum(dist2, 0.0) ** (p / 2)
    mass = np.bincount(labels, weights=w, minlength=k)
    sens = w / np.where(mass > 0, mass, 1.0)[labels]
    if cost_i.sum() > 0:
        sens = sens + cost_i / cost_i.sum()
    prob = sens / sens.sum()
    draws = rng.choice(X.shape[0], size=size, replace=True, p=prob)
    idx, counts = np.unique(draws, return_counts=True)
    return idx, w[idx] * counts / (size * prob[idx])


def k_subspaces(X: Any, n_subspaces: int, dim: int, p: float = 2.0, *, weights: Any = None,
                n_init: int = 10, max_iter: int = 100, tol: float = 1e-6,
                seeding: str = "coreset", coreset_size: int | None = None, seed: Any = None,
                init_bases: Any = None, irls_steps: int = 3, eps: float | None = None,
                check_finite: bool = True) -> KSubspaces:
    """Projective clustering: k subspaces of dimension ``dim`` minimizing
    ``sum_i w_i * min_c dist(x_i, V_c)^p``.

    Parameters
    ----------
    X : array_like, shape (n, d)
        Points as rows, float32 or float64 (integers -> float64); any layout (converted once
        to C order when needed); never modified. Any finite scale: outside the range
        :func:`lpfast.lp_subspace` states, the fit runs on a copy scaled by a power of two
        and reports ``cost``, ``history`` and coefficients in X's units.
    n_subspaces : int, 1 <= k <= n
    dim : int, 1 <= j < d, with ``n_subspaces * dim <= n`` (each subspace needs rows).
    p : float, 1 <= p <= 100
        Exponent. p = 2 is the sum of squared distances; p in [1, 2) is robust to outliers
        (p > 2 as in :func:`lpfast.lp_subspace`).
    weights : array_like, shape (n,), optional
        Non-negative per-row weights (default 1) with a positive sum.
    n_init : int >= 1
        Restarts (seeding + Lloyd); the lowest-cost one is kept. They run in parallel in C++.
    max_iter : int >= 0
        Lloyd iterations per run.
    tol : float >= 0
        Stop when an iteration lowers the cost by at most ``tol`` times the previous cost.
    seeding : {"coreset", "dp", "random"}
        How restarts start:

        * ``"dp"``: k-means++-like D^p seeding. The first seed row is drawn with probability
          proportional to w, each next one proportional to ``w * D^p`` with D the distance
          to the nearest subspace seeded so far. Seed row a gives the subspace spanned by the
          top-j eigenvectors of ``sum x x^T`` over its group: a and the ``2j - 1`` rows most
          aligned with it (largest ``|cos(x, a)|``, ties to the lowest row).
        * ``"random"``: each subspace is the top-j of ``2j`` distinct rows drawn
          proportionally to w.
        * ``"coreset"`` (default): a sensitivity coreset of ``coreset_size`` rows is drawn
          (with replacement, duplicates merged): a pilot D^p seeding on X gives each row its
          distance D_i and cluster c_i, its sensitivity is
          ``s_i = w_i D_i^p / sum_l w_l D_l^p + w_i / W(c_i)`` (W(c) the weight of cluster
          c), rows are drawn with probability ``q_i = s_i / sum s`` and sampled rows weigh
          ``w_i * count_i / (coreset_size * q_i)``. All ``n_init`` restarts of D^p seeding +
          Lloyd run on the coreset (they only seed, so they stop at a relative cost decrease
          of ``max(tol, 1e-3)`` and, for p != 2, take one IRLS step per iteration), and the
          best is refined by Lloyd on all of X with the given ``tol`` and ``irls_steps``.
    coreset_size : int, optional
        Rows drawn for ``"coreset"``; default ``max(4 * n_subspaces * dim, 50 * n_subspaces)``
        (see the README's k-subspaces table for time and cost against ``seeding="dp"`` with
        the same ``n_init``). When it is at least n, the restarts run on X itself.
    seed : int, numpy Generator or None
        Same seed, same result, for any thread count: restart r draws from its own stream
        derived from (seed, r).
    init_bases : array_like, shape (k, d, j), optional, X's float dtype
        Start from these bases (each orthonormalized by QR; each must have rank j) instead
        of seeding: one Lloyd run, ``n_init`` and ``seeding`` ignored.
    irls_steps : int >= 1
        For p != 2: IRLS steps per cluster per Lloyd iteration (default 3).
    eps : float > 0, optional
        IRLS distance floor (p != 2): ``omega_i = w_i * max(dist_i, eps)^(p - 2)``. Default,
        as in ``lp_subspace``: ``sqrt(finfo(X.dtype).eps)`` times the weighted RMS row norm.
    check_finite : bool
        Refuse NaN/Inf in X, weights and init_bases.

    Returns
    -------
    KSubspaces
        ``labels`` (n,), ``bases`` (k, d, j), ``cost``, ``n_iter``, ``history``, and
        ``predict(Y)``, ``coefficients(Y=None)``, ``reconstruct(Y=None)``.

    Notes
    -----
    One Lloyd iteration (``cpp/include/lpfast/k_subspaces.hpp``):

    1. every row goes to the subspace with the smallest ``||x||^2 - ||V_c^T x||^2``, from one
       (n, d) x (d, k*j) product with the stacked bases; ties to the lowest index;
    2. each empty cluster is re-seeded from the worst-served rows: the next ``dim`` rows in
       decreasing ``w_i * dist_i^p`` (ties to the lowest row) give its top-j basis;
    3. each cluster is refit. p = 2: V_c = top-j eigenvectors of ``sum_{i in c} w_i x_i x_i^T``
       (the cost never increases). p != 2: ``irls_steps`` IRLS steps, each with
       ``omega_i = w_i * max(dist(x_i, V_c), eps)^(p - 2)`` and V_c = top-j of
       ``sum omega_i x_i x_i^T`` (majorize-minimize: non-increasing for p in [1, 2]).

    The run returns its lowest-cost iterate. Cost per iteration: ``2 n d k j`` flops for the
    assignment, up to ``n d^2`` for the Grams (for p = 2 only the rows that changed cluster
    update them, so late iterations are cheap), and a warm-started block-Krylov eigensolver
    per cluster. ``lpfast.reference.k_subspaces_lloyd`` is the NumPy version of the same
    iteration.
    """
    common_float_dtype({"X": X, "init_bases": init_bases})  # float32 with float64: TypeError
    X = as_matrix(X, "X", min_cols=2, check_finite=check_finite)
    dtype = X.dtype
    n, d = X.shape
    k = as_int(n_subspaces, "n_subspaces", low=1, high=n)
    j = as_int(dim, "dim", low=1, high=d - 1)
    if k * j > n:
        msg = (f"n_subspaces * dim = {k} * {j} = {k * j} exceeds the {n} rows of X: "
               f"every subspace needs rows to fit it")
        raise ValueError(msg)
    p = as_p(p)
    w = as_row_weights(weights, n, ones=True)
    n_init = as_int(n_init, "n_init", low=1)
    max_iter = as_int(max_iter, "max_iter", low=0)
    tol = as_float(tol, "tol", low=0.0)
    irls_steps = as_int(irls_steps, "irls_steps", low=1)
    as_choice(seeding, "seeding", _SEEDINGS)
    if coreset_size is not None:
        coreset_size = as_int(coreset_size, "coreset_size", low=k * j)
    rng = as_generator(seed)
    V0 = None
    if init_bases is not None:
        V0 = as_float_array(init_bases, "init_bases", dtype, ndim=3, check_finite=check_finite)
        if V0.shape != (k, d, j):
            msg = f"init_bases: expected shape {(k, d, j)}, got {V0.shape}"
            raise ValueError(msg)
        # Orthonormalized here, refusing rank < j as lp_subspace refuses such an init.
        V0 = np.stack([orthonormal_columns(V0[c], f"init_bases[{c}]") for c in range(k)])

    # The fit runs on X / 2**e (see lp_subspace): bases and labels unchanged, costs times
    # 2**(e p) and coefficients times 2**e back in X's units.
    e = scale_exponent(X, p)
    X = scaled(X, e)
    eps, eps_fit = as_scaled_eps(eps, X, w, e)
    core_seed = int(rng.integers(0, 2**63 - 1))
    info: dict[str, Any] = {"eps": eps}
    if V0 is None and seeding == "coreset":
        size = max(4 * k * j, 50 * k) if coreset_size is None else coreset_size
        if size < n:
            idx, cw = _coreset(X, w, k, j, p, size, rng, core_seed)
            Xc = np.ascontiguousarray(X[idx])
            # The coreset fit only seeds the refinement on X: stopping it at a relative
            # decrease of 1e-3 halved the time of p = 1 fits (30522 x 384, k = 10, j = 32:
            # 16.5 s -> 8.5 s) with the same final cost (170549 -> 170545), and one IRLS
            # step per iteration (each still a majorize-minimize step) halved the restarts
            # again (4.4 s -> 2.2 s; final cost 170545 -> 170714, k = 3 and 5 unchanged).
            core = _native.k_subspaces_fit(
                X=Xc, weights=cw, n_subspaces=k, dim=j, p=p, max_iter=max_iter,
                tol=max(tol, _CORESET_TOL), eps=eps_fit, irls_steps=_CORESET_IRLS_STEPS,
                seeding="dp", n_init=n_init, seed=core_seed)
            info.update(coreset_indices=idx, coreset_weights=cw,
                        coreset_cost=unscaled(float(core.cost), e, p),
                        coreset_history=unscaled(np.asarray(core.history, dtype=np.float64), e, p),
                        restart=core.restart)
            V0 = core.bases
    fit = _native.k_subspaces_fit(
        X=X, weights=w, n_subspaces=k, dim=j, p=p, max_iter=max_iter, tol=tol, eps=eps_fit,
        irls_steps=irls_steps, seeding="random" if seeding == "random" else "dp",
        n_init=n_init, seed=core_seed, init_bases=V0, coefficients=True)
    info.setdefault("restart", fit.restart)
    coef = fit.coefficients if e == 0 else np.ldexp(fit.coefficients, e)
    return KSubspaces(fit.labels, fit.bases, unscaled(float(fit.cost), e, p), int(fit.n_iter),
                      unscaled(np.asarray(fit.history, dtype=np.float64), e, p), p,
                      seeding if init_bases is None else "init_bases", info, coef)
