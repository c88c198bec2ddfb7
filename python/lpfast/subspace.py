"""Robust (lp) subspace fitting: the k-dimensional subspace minimizing sum_i w_i dist(x_i, V)^p.

With p = 2 this is the truncated SVD (PCA without centering). With p in [1, 2) far-away
rows weigh less, so a few outlier rows (rare tokens of an embedding matrix, say) no longer
drag the subspace (Tukan et al., "Compressed Deep Networks: Goodbye SVD, Hello Robust
Low-Rank Approximation", arXiv 2009.05647). ``lp_subspace`` fits the subspace by IRLS;
``LpSubspace.factorize`` turns it into the two matrices that replace a layer.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import numpy as np

from . import _native
from ._validate import (as_basis, as_callable, as_choice, as_float, as_scaled_eps,
                        as_int, as_matrix, as_p, as_row_weights, as_rows, common_float_dtype,
                        orthonormal_columns, scale_exponent, scaled, unscaled)

__all__ = ["LpSubspace", "lp_subspace", "subspace_cost"]

_INITS = ("svd",)


class LpSubspace:
    """Result of :func:`lp_subspace`.

    Attributes
    ----------
    basis : ndarray, shape (d, k)
        Orthonormal columns spanning the fitted subspace, in the dtype of X. Columns are the
        top-k eigenvectors of the last reweighted Gram matrix, in descending eigenvalue
        order, each with its largest-magnitude entry positive.
    cost : float
        ``sum_i w_i * dist(x_i, basis)^p`` at ``basis`` (summed in float64).
    n_iter : int
        IRLS steps taken (on all of X, after the coreset stage if any); 0 for p = 2 from
        the ``"svd"`` start, which is already the optimum.
    converged : bool
        Whether the relative cost decrease fell to ``tol`` (or below) before ``max_iter``
        (True for p = 2 from the ``"svd"`` start).
    history : ndarray of float64
        Cost of the start basis, then after each step: ``history[-1] == cost``.
    p, eps : float
        The exponent and the distance floor used in the weights.
    coreset_history : ndarray of float64 or None
        With ``coreset=m``: the cost history of the fit on the sample (weighted sample cost).
    """

    __slots__ = ("basis", "cost", "n_iter", "converged", "history", "p", "eps",
                 "coreset_history", "_X")

    def __init__(self, basis: np.ndarray, history: np.ndarray, n_iter: int, converged: bool,
                 p: float, eps: float, X: np.ndarray | None,
                 coreset_history: np.ndarray | None = None):
        self.basis = basis
        self.history = history
        self.cost = float(history[-1])
        self.n_iter = int(n_iter)
        self.converged = bool(converged)
        self.p = p
        self.eps = eps
        self.coreset_history = coreset_history
        self._X = X

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    def factorize(self, E: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The two factors ``(U, Vt)`` with ``E ≈ U @ Vt``: ``U = E @ basis``, ``Vt = basis.T``.

        Parameters
        ----------
        E : array_like, shape (m, d), optional
            The matrix to factor; default the X that was fitted (kept by reference). For an
            embedding table, E = X: the (n, d) table becomes U (n, k) and Vt (k, d). For a
            ``torch.nn.Linear`` weight W (out, in) fitted on its rows, ``W ≈ U @ Vt`` is a
            Linear(in, k) with weight Vt followed by a Linear(k, out) with weight U.

        Returns
        -------
        U : ndarray, shape (m, k)
        Vt : ndarray, shape (k, d), C-contiguous
            In the dtype of the basis.
        """
        if E is None:
            if self._X is None:
                msg = "E: this result keeps no X to factor; pass E explicitly"
                raise ValueError(msg)
            E = self._X
        else:
            E = as_rows(E, "E", self.basis.shape[0], self.basis.dtype)
        return E @ self.basis, np.ascontiguousarray(self.basis.T)

    def __repr__(self) -> str:
        d, k = self.basis.shape
        return (f"LpSubspace(d={d}, k={k}, p={self.p}, cost={self.cost:.6g}, "
                f"n_iter={self.n_iter}, converged={self.converged}, dtype={self.basis.dtype})")


def _progress(verbose: bool, callback: Callable[[int, float], Any] | None, stage: str,
              e: int = 0, p: float = 1.0):
    """The kernel's per-step hook (None when nobody listens); costs of X / 2**e come back in
    the caller's units."""
    if not verbose and callback is None:
        return None
    start = time.perf_counter()

    def report(iteration: int, cost: float) -> bool:
        cost = unscaled(cost, e, p)
        if verbose:
            print(f"lp_subspace{stage}: iter {iteration:4d}  cost {cost:.9g}  "
                  f"({time.perf_counter() - start:.2f} s)", file=sys.stderr, flush=True)
        return bool(callback(iteration, cost)) if callback is not None else False

    return report


def lp_subspace(X: Any, k: int, p: float = 1.0, *, weights: Any = None, max_iter: int = 100,
                tol: float = 1e-6, init: Any = "svd", coreset: int | None = None,
                seed: Any = None, eps: float | None = None, verbose: bool = False,
                callback: Callable[[int, float], Any] | None = None) -> LpSubspace:
    """Fit the k-dimensional subspace minimizing ``sum_i w_i * dist(x_i, V)^p`` by IRLS.

    ``dist(x, V) = ||x - V V^T x||_2`` for the rows x of X; subspaces pass through the origin
    (no centering), as needed to factor a weight matrix.

    Parameters
    ----------
    X : array_like, shape (n, d)
        Points as rows; float32 or float64 (result in the same dtype; integers -> float64).
        Any memory layout (converted once to C order when needed); never modified. Any
        finite values: the fit is scale-equivariant, and when ``sqrt(d) * max|x|`` lies
        outside [2**-40, 2**40] (float32; [2**-400, 2**400] for float64; narrower for
        p > 2, so that p-th powers of distances stay in float64's range) it runs on a
        copy of X scaled by a power of two, exactly, and reports costs in X's units
        (``inf`` only where the cost itself exceeds float64's range).
    k : int, 1 <= k <= min(n, d)
        Subspace dimension. ``k == d`` is allowed (the whole space: cost 0); ``k > n``
        is refused, as the rows span at most n dimensions.
    p : float, 1 <= p <= 100
        Exponent. p in [1, 2] is the main range: each IRLS step is a majorize-minimize step
        and the cost never increases. p = 2 gives the truncated SVD. p in (2, 100] is
        allowed, but IRLS is then no longer guaranteed to descend: a step that would raise
        the cost is rejected and the fit stops at the last improving basis. Beyond 100 the
        p-th powers of relative distances vanish in float64 and the fit could not tell
        bases apart.
        p = 2 with ``init="svd"`` returns that start as it is: it is the exact optimum
        (``n_iter`` 0, ``converged`` True, ``history == [cost]``, ``coreset`` unused).
    weights : array_like, shape (n,), optional
        Non-negative per-row weights w (default 1), e.g. token frequencies or coreset
        weights; at least one must be positive. Converted to X's dtype (a vector of n, so
        float64 weights for float32 X are fine, unlike a float64 ``init``).
    max_iter : int >= 1
        At most this many IRLS steps.
    tol : float >= 0
        Stop when a step lowers the cost by at most ``tol`` times the previous cost.
    init : "svd" or array_like, shape (d, k)
        Start basis: the weighted SVD basis (the p = 2 optimum), or given columns
        (orthonormalized by QR; they must have rank k) of X's float dtype.
    coreset : int, optional
        Fit first on a Lewis-weight sample of this many rows
        (``lpfast.lewis_sample(X, coreset, p, seed=seed, method="sketch")``, p < 4; sample
        weights multiplying the
        per-row costs, times ``weights`` when given), then refine on all of X from the
        sample's basis (the refinement uses the same ``max_iter`` and ``tol``). Pays off
        when ``coreset`` is much smaller than n: the sample fit converges on few rows and
        the refinement needs few full steps. ``coreset >= n`` fits all of X directly.
    seed : int or numpy Generator, optional
        Seed of the coreset sample (only used with ``coreset``). Same seed, same result.
    eps : float > 0, optional
        Distance floor in the weights: ``omega_i = w_i * max(dist_i, eps)^(p - 2)``, so rows
        lying on the subspace (dist 0) get a large but finite weight instead of dividing by
        zero. Default ``sqrt(finfo(X.dtype).eps)`` times the weighted RMS row norm of X
        (1.5e-8 resp. 3.5e-4 relative for float64 resp. float32). Only the weights use it:
        ``cost`` is the exact cost.
    verbose : bool
        Print the cost after every step to stderr.
    callback : callable(iteration, cost), optional
        Called (with the GIL held) with the start cost (iteration 0) and after every step;
        returning True stops the fit early (``converged`` then stays False). With
        ``coreset``, it first sees the sample stage's iterations. At p = 2 from the
        ``"svd"`` start it is called once, with iteration 0 (there is no step to stop).

    Returns
    -------
    LpSubspace
        ``basis`` (d, k), ``cost``, ``n_iter``, ``converged``, ``history``, and
        ``factorize(E=None) -> (U, Vt)`` with ``U = E @ basis``.

    Notes
    -----
    One IRLS step: ``omega_i = w_i * max(dist(x_i, V), eps)^(p - 2)``, then V <- the top-k
    eigenvectors of ``X^T diag(omega) X``. The compiled kernel forms that weighted Gram
    matrix by blocked symmetric rank updates (n*d^2 flops, split over
    ``lpfast.get_num_threads()`` threads) and solves its (d, d) eigenproblem, instead of
    an SVD of the reweighted (n, d) matrix: about 6-10x less work per step at n >> d
    (see ``cpp/include/lpfast/irls.hpp``). The distances for the next weights cost one
    (n, d) x (d, k) product. Results are deterministic for a given thread count; between
    thread counts they may differ by rounding.
    Stopping: after a step from cost c to c', stop (converged) when ``c - c' <= tol * c``.
    p = 2 from the ``"svd"`` start: one weighted Gram, its top-k eigenvectors and one
    distance pass for the cost (n*d^2 + 2*n*d*k flops); an IRLS step would form the same
    Gram again to return the same basis.
    """
    if not isinstance(init, str):
        common_float_dtype({"X": X, "init": init})  # float32 with float64: TypeError
    X = as_matrix(X, "X")  # own float dtype, else float64; tensors viewed
    n, d = X.shape
    k = as_int(k, "k", low=1, high=min(n, d))
    p = as_p(p)
    w = as_row_weights(weights, n, X.dtype)
    max_iter = as_int(max_iter, "max_iter", low=1)
    tol = as_float(tol, "tol", low=0.0)
    caller_X = X
    e = scale_exponent(X, p)  # the fit runs on X / 2**e: bases unchanged, costs rescaled
    X = scaled(X, e)
    eps, eps_fit = as_scaled_eps(eps, X, w, e)
    if isinstance(init, str):
        as_choice(init, "init", _INITS)
        start = None
    else:
        start = orthonormal_columns(as_basis(init, "init", d, k, X.dtype), "init")
    if coreset is not None:
        coreset = as_int(coreset, "coreset", low=k)
    as_callable(callback, "callback", "(iteration, cost)")

    if p == 2.0 and start is None:
        # The weighted PCA basis minimizes the weighted squared distances: nothing to iterate,
        # and a coreset stage would only approximate what the full Gram gives exactly.
        basis = _native.weighted_pca(X=X, weights=w, k=k)
        cost = unscaled(_native.subspace_cost(X=X, weights=w, basis=basis, p=p), e, p)
        report = _progress(verbose, callback, "")
        if report is not None:
            report(0, cost)
        return LpSubspace(basis, np.array([cost]), 0, True, p, eps, caller_X)

    coreset_history = None
    if coreset is not None and coreset < n:
        from .lewis import lewis_sample

        # The sketched Lewis weights: 0.3 s instead of 2.5 s for the exact ones at
        # 30522 x 384 (float32, one thread), and as good for drawing a sample.
        idx, cw = lewis_sample(X, coreset, p, seed=seed, method="sketch")
        idx = np.asarray(idx)
        cw = np.asarray(cw, dtype=np.float64)
        if w is not None:
            cw = cw * w[idx]
        Xs, ws = np.ascontiguousarray(X[idx]), np.ascontiguousarray(cw, dtype=X.dtype)
        if ws.sum() > 0:  # else every sampled row weighs 0: only the full fit is left
            if start is None:
                start = _native.weighted_pca(X=Xs, weights=ws, k=k)
            start, hist, _, _ = _native.lp_subspace_irls(
                X=Xs, weights=ws, init=start, p=p, eps=eps_fit, tol=tol, max_iter=max_iter,
                callback=_progress(verbose, callback, "[coreset]", e, p))
            coreset_history = unscaled(np.asarray(hist, dtype=np.float64), e, p)
    if start is None:
        start = _native.weighted_pca(X=X, weights=w, k=k)
    basis, hist, n_iter, converged = _native.lp_subspace_irls(
        X=X, weights=w, init=start, p=p, eps=eps_fit, tol=tol, max_iter=max_iter,
        callback=_progress(verbose, callback, "", e, p))
    history = unscaled(np.asarray(hist, dtype=np.float64), e, p)
    return LpSubspace(basis, history, n_iter, converged, p, eps, caller_X, coreset_history)


def subspace_cost(X: Any, basis: Any, p: float = 1.0, *, weights: Any = None) -> float:
    """``sum_i w_i * ||x_i - V V^T x_i||_2^p`` for the rows x_i of X and V = basis.

    Parameters
    ----------
    X : array_like, shape (n, d), any finite scale (as in :func:`lp_subspace`)
    basis : array_like, shape (d, k), orthonormal columns (not checked), X's float dtype
        (float32 with float64 is a TypeError; integers are converted)
    p : float, 0 <= p <= 100 (the fits need p >= 1)
    weights : array_like, shape (n,), optional, non-negative, converted to X's dtype

    Returns
    -------
    float (summed in float64, in one pass over X: 2*n*d*k flops).
    """
    common_float_dtype({"X": X, "basis": basis})  # float32 with float64: TypeError
    X = as_matrix(X, "X")
    n, d = X.shape
    V = as_basis(basis, "basis", d, None, X.dtype)
    p = as_p(p, low=0.0)
    w = as_row_weights(weights, n, X.dtype)
    e = scale_exponent(X, p)
    return unscaled(_native.subspace_cost(X=scaled(X, e), weights=w, basis=V, p=p), e, p)
