"""Structured pruning of hidden units between two Linears, with a least-squares refit.

An FFN block ``y = W2 · act(W1 x + b1) + b2`` has h hidden units. Keeping k of them (rows
of W1 and b1, columns of W2) gives two plain, smaller dense layers. Which units, and what
W2 becomes, are chosen from the Gram of the second Linear's input (the activations after
``act``), ``C = E[a aᵀ]`` (h, h), as :func:`lpfast.torch.calibrate` records it:

* score of unit j: ``‖W2[:, j]‖² · C_jj``, the output energy the unit carries on the
  calibration inputs; the k largest are kept (K, sorted);
* refit: ``W2' = argmin_V tr((W2 − V P_K) C (W2 − V P_K)ᵀ) = W2 C[:, K] C[K, K]⁻¹``, so
  the kept units also carry what the dropped ones contributed in the directions they share.

Measured on all-MiniLM-L6-v2 (issue 13, /work/scratch-e2e/FINDINGS.md): keep 768 of 1536
units in all 6 FFNs gives a held-out mean cosine of 0.959 to the original, against 0.909
for a whitened SVD at the same parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ._validate import as_choice, as_float, as_float_array, as_int

__all__ = ["HiddenPrune", "prune_hidden_units", "hidden_keep_count"]

_SCORES = ("gram",)


@dataclass(frozen=True)
class HiddenPrune:
    """Result of :func:`prune_hidden_units`.

    Attributes
    ----------
    keep : ndarray (k,), int64
        Kept hidden units, ascending: rows of W1/b1 and columns of W2 to keep.
    W_out : ndarray (d_out, k), the dtype of the input W_out
        The refit second weight; replaces ``W_out[:, keep]``.
    scores : ndarray (h,), float64
        The score of every hidden unit (larger is kept first).
    error_before, error_after : float
        Relative calibration error ``tr(D C Dᵀ) / tr(W2 C W2ᵀ)`` with D = W2 − V P_K, for
        plain column selection V = W2[:, keep] (before) and for the refit V = W_out (after);
        0 when ``tr(W2 C W2ᵀ)`` is 0.
    refit : bool
        False when the refit was not used: all units kept, or no solve beat plain selection
        (then ``W_out = W2[:, keep]``).
    """

    keep: np.ndarray
    W_out: np.ndarray
    scores: np.ndarray
    error_before: float
    error_after: float
    refit: bool


def hidden_keep_count(keep, h: int, name: str = "keep") -> int:
    """The number of units ``keep`` asks for out of ``h`` >= 1: an int in [1, h], or a
    fraction in (0, 1] (rounded, at least 1)."""
    # An FFN without hidden units has nothing to keep or prune: "at least 1" cannot hold.
    h = as_int(h, "h", low=1)
    if isinstance(keep, (float, np.floating)):
        frac = as_float(keep, name)
        if not 0 < frac <= 1:
            msg = f"{name}: a fraction must lie in (0, 1], got {frac}"
            raise ValueError(msg)
        return max(1, min(h, int(round(frac * h))))
    return as_int(keep, name, low=1, high=h)


def _check_gram(C, h: int, name: str) -> np.ndarray:
    C = as_float_array(C, name, np.dtype(np.float64), ndim=2)
    if C.shape != (h, h):
        msg = f"{name}: expected shape ({h}, {h}) (one row per hidden unit of W_out), got {C.shape}"
        raise ValueError(msg)
    scale = max(float(np.abs(C).max()), np.finfo(np.float64).tiny)
    if np.abs(C - C.T).max() > 1e-8 * scale:
        msg = f"{name}: must be symmetric (a Gram matrix XᵀX / n)"
        raise ValueError(msg)
    if (np.diag(C) < -1e-12 * scale).any():
        msg = f"{name}: has a negative diagonal entry; a Gram matrix is positive semidefinite"
        raise ValueError(msg)
    return C


def _rel_error(V: np.ndarray, WC_K: np.ndarray, CKK: np.ndarray, total: float) -> float:
    """tr(D C Dᵀ) / total for D = W − V P_K, expanded as tr(W C Wᵀ) − 2 tr(V (W C)[:, K]ᵀ)
    + tr(V C[K, K] Vᵀ): O(d k²) instead of the O(d h²) of forming D C. Cancellation costs
    about log10(1/error) of float64's 16 digits, harmless for a reported error."""
    if not total > 0:
        return 0.0
    err = total - 2.0 * float(np.einsum("ij,ij->", V, WC_K)) + float(np.einsum("ij,ij->", V @ CKK, V))
    return max(err, 0.0) / total


def prune_hidden_units(W_out, hidden_gram, keep, *, ridge: float = 1e-6,
                       score: str = "gram") -> HiddenPrune:
    """Choose ``keep`` hidden units of an FFN pair and refit the second weight.

    Parameters
    ----------
    W_out : array (d_out, h), float32 or float64
        Weight of the second Linear (torch layout: ``y = a @ W_out.T + b``).
    hidden_gram : array (h, h), symmetric positive semidefinite
        ``C = AᵀA / n`` of the second Linear's inputs A (n, h) (``LayerStats.input_gram``);
        converted to float64.
    keep : int in [1, h], or float in (0, 1]
        Units to keep: a count (an int: ``1`` is one unit), or a fraction of h (a float:
        ``1.0`` is all units; rounded, at least 1).
    ridge : float >= 0
        The refit solves ``(C[K, K] + λ I) X = C[K, :] W_outᵀ`` with
        ``λ = ridge · mean(diag C[K, K])``: a relative ridge that keeps the solve finite
        when kept units are linearly dependent on the calibration data (dead units).
    score : "gram"
        ``‖W_out[:, j]‖² · C_jj``. (Optimal-brain-surgeon scores ``‖W_out[:, j]‖² /
        (C⁻¹)_jj``, recomputed over 8 rounds, lowered the calibration error of
        all-MiniLM-L6-v2's FFNs by only 2-8 % relative at 30 s a layer: not offered.)

    Returns
    -------
    HiddenPrune
        ``keep`` (sorted indices), the refit ``W_out`` (d_out, k) in the input's dtype,
        ``scores``, ``error_before`` / ``error_after`` (see :class:`HiddenPrune`). The refit
        is never worse than plain selection on the calibration objective: if the ridge (or a
        singular C[K, K]) makes the solve worse, the minimum-norm least-squares solution
        (``scipy.linalg.lstsq``) is used, and failing that plain selection (``refit=False``). Keeping all h units returns
        ``W_out`` unchanged (error 0).

    Complexity: O(d_out · h + h log h) to score; O(d_out · h² + k³ + d_out · k²) to refit
    and report the two errors (one product W_out · C, an LU solve); memory
    O(h² + d_out · h) float64.

    Raises
    ------
    TypeError / ValueError
        Non-float arrays, wrong shapes (W_out not 2-d, hidden_gram not (h, h)), NaN/Inf,
        a non-symmetric gram or one with a negative diagonal, keep out of range, a negative
        ridge, an unknown score.
    """
    W = as_float_array(W_out, "W_out", ndim=2)
    d_out, h = W.shape
    if h < 1 or d_out < 1:
        msg = f"W_out: expected a (d_out, h) matrix with d_out, h >= 1, got shape {W.shape}"
        raise ValueError(msg)
    C = _check_gram(hidden_gram, h, "hidden_gram")
    k = hidden_keep_count(keep, h)
    ridge = as_float(ridge, "ridge", low=0.0)
    as_choice(score, "score", _SCORES)

    W64 = W.astype(np.float64)
    scores = np.einsum("ij,ij->j", W64, W64) * np.diag(C)
    # Stable sort on -score: ties keep the lower index, so the choice is deterministic.
    K = np.sort(np.argsort(-scores, kind="stable")[:k]).astype(np.int64)
    if k == h:
        return HiddenPrune(K, W.copy(), scores, 0.0, 0.0, False)
    WC = W64 @ C  # the one O(d h²) product: gives the total and the refit's right-hand side
    total = float(np.einsum("ij,ij->", WC, W64))
    WC_K = WC[:, K]
    CKK = C[np.ix_(K, K)]
    plain = W64[:, K]
    before = _rel_error(plain, WC_K, CKK, total)
    lam = ridge * float(np.mean(np.diag(CKK)))
    rhs = WC_K.T  # C[K, :] W_outᵀ, (k, d_out), as C is symmetric
    # An LU solve (NumPy): on the development machine scipy.linalg.solve(assume_a="pos"),
    # scipy's cho_factor and even NumPy's Cholesky took 0.9-1.5 s at k = 768 against
    # 0.35 s for np.linalg.solve (bench/bench_prune.py, machine under load).
    try:
        V = np.linalg.solve(CKK + lam * np.eye(k), rhs).T
        after = _rel_error(V, WC_K, CKK, total) if np.isfinite(V).all() else np.inf
    except np.linalg.LinAlgError:
        after = np.inf
    if not after <= before:
        # Singular C[K, K] with ridge 0 (dead or duplicate units kept): the minimum-norm
        # least-squares solution is still an optimum of the objective.
        V = scipy.linalg.lstsq(CKK, rhs)[0].T
        after = _rel_error(V, WC_K, CKK, total)
    if not after <= before:  # also catches NaN from a degenerate solve
        return HiddenPrune(K, np.ascontiguousarray(plain.astype(W.dtype)), scores, before,
                           before, False)
    return HiddenPrune(K, np.ascontiguousarray(V.astype(W.dtype)), scores, before, after, True)
