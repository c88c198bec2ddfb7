"""Fitting doped Kronecker products to a dense matrix: W ≈ sum_r kron(A[r], B[r]) + S.

``nearest_kronecker`` is the best Kronecker sum (Van Loan–Pitsianis); ``doped_kp_fit``
alternates it with the best sparse doping S (Thakker et al., arXiv 2102.07071) and, when
the factor shapes are not given, tries the few ``kron_factor_shapes`` of W's shape and keeps
the best. The result is a :class:`lpfast.DopedKronecker`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validate import (RatioTooSmall, as_factor_shapes, as_float, as_int, as_matrix,
                        as_ratio)
from .kron import DopedKronecker

__all__ = ["doped_kp_fit", "kron_factor_shapes", "nearest_kronecker"]

#: Largest matrix side ``kron_factor_shapes`` factors (an int32 index still reaches it).
_MAX_SIDE = 2**31 - 1


def kron_factor_shapes(m: int, n: int, limit: int = 4) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Factor shapes ``(a_shape, b_shape)`` of an (m, n) matrix, fewest Kronecker parameters first.

    Every ``(m1, n1), (m2, n2)`` with ``m1*m2 = m`` and ``n1*n2 = n`` is ranked by: a 1 x 1
    factor last (kron with a 1 x 1 factor is no compression), then ``m1*n1 + m2*n2`` (the
    parameters of one Kronecker term), then ``|m1 - n1| + |m2 - n2|`` (squarer factors),
    then the shapes themselves; the first ``limit`` are returned.

    Parameters
    ----------
    m, n : int >= 1
        The matrix shape (out_features, in_features of a Linear weight).
    limit : int >= 1

    Returns
    -------
    list of ((m1, n1), (m2, n2)), at most ``limit`` long.

    Cost: O(divisors(m) * divisors(n)) after an O(sqrt(m) + sqrt(n)) divisor search
    (a few seconds at worst, for the most composite sides near the limit).

    Raises
    ------
    ValueError
        ``m`` or ``n`` above ``2**31 - 1``: no layer has such a side, and the candidate list
        of larger ones is not worth building.
    """
    m = as_int(m, "m", low=1, high=_MAX_SIDE)
    n = as_int(n, "n", low=1, high=_MAX_SIDE)
    limit = as_int(limit, "limit", low=1)

    def divisors(k: int) -> np.ndarray:
        # Divisors come in pairs (d, k // d) with d <= sqrt(k).
        small = [d for d in range(1, math.isqrt(k) + 1) if k % d == 0]
        return np.array(sorted(set(small + [k // d for d in small])), dtype=np.int64)

    # Every pair at once in int64 (sides < 2**31 keep m1*n1 + m2*n2 below 2**63): the most
    # composite sides near the limit have 1600 divisors, 2.6 million pairs, too many for
    # Python tuples (80 s).
    m1, n1 = np.meshgrid(divisors(m), divisors(n), indexing="ij")
    m1, n1 = m1.ravel(), n1.ravel()
    m2, n2 = m // m1, n // n1
    trivial = (m1 * n1 == 1) | (m2 * n2 == 1)
    params = m1 * n1 + m2 * n2
    squareness = np.abs(m1 - n1) + np.abs(m2 - n2)
    # The shapes break ties: m1 then n1 (m2 and n2 follow from them).
    order = np.lexsort((n1, m1, squareness, params, trivial))[:limit]
    return [((int(m1[i]), int(n1[i])), (int(m2[i]), int(n2[i]))) for i in order]


def _rearrange(W: np.ndarray, a_shape: tuple[int, int], b_shape: tuple[int, int]) -> np.ndarray:
    """Van Loan's R(W), (m1*n1, m2*n2): ||W - kron(A, B)||_F = ||R(W) - vec(A) vec(B)^T||_F."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    return W.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def _top_singular(R: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k singular triples of R, signs fixed so each u's largest-|.| entry is positive."""
    small = min(R.shape)
    if small <= 256 or k >= small // 4:
        U, s, Vt = np.linalg.svd(R, full_matrices=False)
        U, s, Vt = U[:, :k], s[:k], Vt[:k]
    else:
        from scipy.sparse.linalg import svds

        v0 = np.ones(small, dtype=R.dtype) / np.sqrt(small)  # deterministic start
        U, s, Vt = svds(R, k=k, v0=v0)
        order = np.argsort(s)[::-1]
        U, s, Vt = U[:, order], s[order], Vt[order]
    flip = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(U.shape[1])])
    flip[flip == 0] = 1
    return U * flip, s, Vt * flip[:, None]


def _kron_factors(W: np.ndarray, a_shape, b_shape, rank: int) -> tuple[np.ndarray, np.ndarray]:
    U, s, Vt = _top_singular(_rearrange(W, a_shape, b_shape), rank)
    root = np.sqrt(s).astype(W.dtype)
    A = (U * root).T.reshape(rank, *a_shape)
    B = (Vt * root[:, None]).reshape(rank, *b_shape)
    return np.ascontiguousarray(A), np.ascontiguousarray(B)


def _kron_dense(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return sum(np.kron(a, b) for a, b in zip(A, B))


def _largest_entries(R: np.ndarray, nnz: int) -> np.ndarray:
    """Sorted flat positions of the nnz entries of R with the largest magnitude."""
    flat = R.ravel()
    if nnz >= flat.size:
        return np.arange(flat.size)
    if nnz == 0:
        return np.zeros(0, dtype=np.intp)
    return np.sort(np.argpartition(np.abs(flat), flat.size - nnz)[flat.size - nnz:])


def _csr_from_positions(positions: np.ndarray, values: np.ndarray, shape: tuple[int, int]):
    """(indptr, indices, data) of the matrix holding ``values`` at sorted flat ``positions``."""
    rows, cols = np.divmod(positions, shape[1])
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int64), values


def nearest_kronecker(W: Any, a_shape: Any, b_shape: Any, rank: int = 1) -> DopedKronecker:
    """The best sum of ``rank`` Kronecker products in Frobenius norm (Van Loan–Pitsianis).

    Parameters
    ----------
    W : array_like, shape (m1*m2, n1*n2), float32 or float64
    a_shape, b_shape : (m1, n1), (m2, n2)
    rank : int, 1 <= rank <= min(m1*n1, m2*n2)

    Returns
    -------
    DopedKronecker without doping, A of shape (rank, m1, n1), B of shape (rank, m2, n2).

    The factors are the top singular triples of the rearranged W (m1*n1 x m2*n2), split
    as sqrt(sigma) u and sqrt(sigma) v, signs fixed so u's largest entry is positive.
    Cost: a truncated SVD of an (m1*n1, m2*n2) matrix.
    """
    W = as_matrix(W, "W")  # an empty W has no factors to fit
    a_shape, b_shape = as_factor_shapes(W.shape, a_shape, b_shape)
    rank = as_int(rank, "rank", low=1, high=max(1, min(a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])))
    A, B = _kron_factors(W, a_shape, b_shape, rank)
    return DopedKronecker(A, B)


def doped_kp_fit(W: Any, a_shape: Any = None, b_shape: Any = None, density: float | None = None,
                 rank: int = 1, n_iter: int = 10, *, tol: float = 1e-6,
                 ratio: float | None = None) -> DopedKronecker:
    """Fit ``W ≈ sum_r kron(A[r], B[r]) + S`` with S holding ``density * W.size`` entries.

    Alternates the two exact partial minimizations: the Kronecker part is the nearest
    Kronecker sum of ``W - S`` (Van Loan–Pitsianis), then S keeps the largest-magnitude
    entries of ``W - KP``. Each step cannot raise the error, the start is nearest_kronecker
    plus top-|residual| doping, and the best iterate is returned: its relative Frobenius
    error never exceeds that baseline.

    Parameters
    ----------
    W : array_like, shape (m1*m2, n1*n2), float32 or float64
    a_shape, b_shape : (m1, n1), (m2, n2), optional (both or neither)
        Not given: each of ``kron_factor_shapes(*W.shape)`` (the 4 with the fewest
        Kronecker parameters, no 1 x 1 factor) is fitted, with the rank lowered to what the
        shapes allow, and the one with the lowest relative error is kept.
    density : float in [0, 1]
        Fraction of W's entries stored in S (exactly one of ``density`` and ``ratio``).
    rank : int, Kronecker rank R (at most ``min(m1*n1, m2*n2)`` for given shapes)
    n_iter : int >= 0, alternation rounds after the baseline
    tol : float, stop when the relative error improves by less than this
    ratio : float > 1, optional
        Instead of ``density``: W's compression ratio ``W.size / n_params``; S gets
        ``floor(W.size / ratio - rank * (m1*n1 + m2*n2))`` entries (shapes whose factors
        alone exceed the budget are skipped).

    Returns
    -------
    DopedKronecker with ``fit_info``: ``relative_error`` (per round), ``n_iter``,
    ``a_shape``, ``b_shape``, ``density`` (the chosen ones) and ``candidates`` (one dict per
    shape tried: ``a_shape``, ``b_shape``, ``density``, ``relative_error`` (best round) or
    ``reason`` when skipped).

    Raises
    ------
    RatioTooSmall (a ValueError)
        ``ratio`` leaves no room for the Kronecker factors of any shape tried.

    Cost per round and shape: one truncated SVD of (m1*n1, m2*n2) plus O(m*n) for the
    residual.
    """
    W = as_matrix(W, "W")  # an empty W has no factors to fit
    m, n = W.shape
    if (a_shape is None) != (b_shape is None):
        msg = "a_shape, b_shape: give both or neither"
        raise ValueError(msg)
    if (density is None) == (ratio is None):
        msg = "density, ratio: give exactly one"
        raise ValueError(msg)
    if ratio is not None:
        ratio = as_ratio(ratio)
    else:
        density = as_float(density, "density", low=0.0, high=1.0)
    if a_shape is None:
        rank = as_int(rank, "rank", low=1)
        shapes = kron_factor_shapes(m, n)
    else:
        a_shape, b_shape = as_factor_shapes(W.shape, a_shape, b_shape)
        rank = as_int(rank, "rank", low=1,
                      high=max(1, min(a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])))
        shapes = [(a_shape, b_shape)]
    n_iter = as_int(n_iter, "n_iter", low=0)
    tol = as_float(tol, "tol", low=0.0)
    tried, best = [], None
    for a, b in shapes:
        d = density
        if ratio is not None:
            kp = rank * (a[0] * a[1] + b[0] * b[1])
            budget = m * n / ratio - kp
            if budget < 0:
                tried.append({"a_shape": a, "b_shape": b, "relative_error": None,
                              "reason": f"Kronecker factors alone ({kp}) exceed the budget"})
                continue
            d = math.floor(budget) / (m * n)
        op = _fit_shapes(W, a, b, d, min(rank, a[0] * a[1], b[0] * b[1]), n_iter, tol)
        err = float(min(op.fit_info["relative_error"]))
        tried.append({"a_shape": a, "b_shape": b, "density": d, "relative_error": err})
        if best is None or err < best[0]:
            best = (err, op, a, b, d)
    if best is None:
        msg = (f"ratio: {ratio} leaves no room even for the Kronecker factors of a "
               f"{m}x{n} weight at rank {rank}; lower the ratio or the rank")
        raise RatioTooSmall(msg)
    _, op, a, b, d = best
    op.fit_info.update(a_shape=a, b_shape=b, density=d, candidates=tried)
    return op


def _fit_shapes(W: np.ndarray, a_shape: tuple[int, int], b_shape: tuple[int, int],
                density: float, rank: int, n_iter: int, tol: float) -> DopedKronecker:
    """The alternation of ``doped_kp_fit`` at one pair of factor shapes (validated)."""
    nnz = int(round(density * W.size))
    norm = float(np.linalg.norm(W)) or 1.0

    def doping_for(A, B):
        """The optimal S for this Kronecker part, as (flat positions, values), and its error."""
        resid = W - _kron_dense(A, B)
        positions = _largest_entries(resid, nnz)
        values = resid.ravel()[positions].copy()
        resid.ravel()[positions] = 0
        return (positions, values), float(np.linalg.norm(resid)) / norm

    A, B = _kron_factors(W, a_shape, b_shape, rank)
    S, err = doping_for(A, B)
    best, history = (A, B, S), [err]
    for _ in range(n_iter):
        S_dense = np.zeros_like(W)
        S_dense.ravel()[S[0]] = S[1]
        A, B = _kron_factors(W - S_dense, a_shape, b_shape, rank)
        S, new_err = doping_for(A, B)
        history.append(new_err)
        if new_err < min(history[:-1]):
            best = (A, B, S)
        if history[-2] - new_err <= tol:
            break
    S = _csr_from_positions(*best[2], W.shape) if nnz else None
    op = DopedKronecker(best[0], best[1], S)
    op.fit_info = {"relative_error": history, "n_iter": len(history) - 1}
    return op
