"""Doped Kronecker fits under the layer's input statistics (err_C, see ``calibrated.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from ._gram import Gram, as_gram, as_ridge, csr_parts, dense_sparse, doping
from ._validate import as_float, as_int, as_ndarray, as_shape2, tensor_as_numpy
from .kron import DopedKronecker
from .kron_fit import doped_kp_fit

__all__ = ["doped_kp_fit_calibrated"]


def _kron_sum(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    R, m1, n1 = A.shape
    _, m2, n2 = B.shape
    # kron(A_r, B_r)[i1*m2 + i2, j1*n2 + j2] = A_r[i1, j1] B_r[i2, j2], summed over r.
    return np.einsum("rac,rbd->abcd", A, B).reshape(m1 * m2, n1 * n2)


def _solve_pd(G: np.ndarray, H: np.ndarray) -> np.ndarray:
    """G X = H for a symmetric PSD G: Cholesky, else least squares (G singular when the
    other factor's rank terms are linearly dependent)."""
    try:
        return scipy.linalg.solve(G, H, assume_a="pos", check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning):
        return np.linalg.lstsq(G, H, rcond=None)[0]


def _refit_first(P4: np.ndarray, C4: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The exact minimizer of err_C over A in Σ_r kron(A_r, B_r), B fixed.

    Row (i1, i2) of Σ_r kron(A_r, B_r) is linear in a_{i1} = (A_r[i1, :])_r, and err_C
    splits over i1 into quadratics with one shared Hessian
    G[(r, j1), (s, j1')] = Σ_{j2, j2'} (B_rᵀ B_s)[j2, j2'] C[(j1, j2), (j1', j2')]
    and right-hand sides h[i1, (r, j1)] = Σ_{i2, j2} B_r[i2, j2] (T C)[(i1, i2), (j1, j2)]:
    one (R n1)² system with m1 right-hand sides. ``P4`` is T C reshaped (m1, m2, n1, n2),
    ``C4`` is C reshaped (n1, n2, n1, n2). For B given A, call it on the transposed
    problem (see ``_refit_second``). Cost: O(R² n1² n2²) for G plus O(m n R) for h.
    """
    R, (m1, _, n1, n2) = B.shape[0], P4.shape
    BB = np.einsum("rbd,sbe->rsde", B, B).reshape(R * R, n2 * n2)
    G = BB @ C4.transpose(1, 3, 0, 2).reshape(n2 * n2, n1 * n1)
    G = G.reshape(R, R, n1, n1).transpose(0, 2, 1, 3).reshape(R * n1, R * n1)
    H = np.einsum("abcd,rbd->arc", P4, B).reshape(m1, R * n1)
    return _solve_pd(G, H.T).T.reshape(m1, R, n1).transpose(1, 0, 2)


def _refit_second(P4: np.ndarray, C4: np.ndarray, A: np.ndarray) -> np.ndarray:
    """B given A: kron(A_r, B_r) and kron(B_r, A_r) are the same matrix with rows and
    columns permuted (i1, i2) -> (i2, i1), so B is the first factor of the swapped problem."""
    return _refit_first(P4.transpose(1, 0, 3, 2), C4.transpose(1, 0, 3, 2), A)


def _balance(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale A_r c, B_r / c so both factors of a term have the same norm (the product is
    unchanged; keeps float32 storage away from large/small extremes)."""
    na = np.linalg.norm(A.reshape(A.shape[0], -1), axis=1)
    nb = np.linalg.norm(B.reshape(B.shape[0], -1), axis=1)
    c = np.where((na > 0) & (nb > 0), np.sqrt(nb / np.where(na > 0, na, 1.0)), 1.0)
    return A * c[:, None, None], B / c[:, None, None]


def _check_start(start: Any, W: Any, a_shape: Any, b_shape: Any, density: Any, rank: Any) -> None:
    if not isinstance(start, DopedKronecker):
        msg = f"start: expected a DopedKronecker, got {type(start).__name__}"
        raise TypeError(msg)
    W = tensor_as_numpy(W, "W") if hasattr(W, "detach") else as_ndarray(W, "W")
    want = (W.shape, as_shape2(a_shape, "a_shape"), as_shape2(b_shape, "b_shape"),
            as_int(rank, "rank", low=1), int(round(as_float(density, "density", low=0.0, high=1.0) * W.size)))
    got = (start.shape, start.a_shape, start.b_shape, start.rank, start.nnz)
    if got != want:
        msg = f"start: expected (shape, a_shape, b_shape, rank, nnz) = {want}, got {got}"
        raise ValueError(msg)


def doped_kp_fit_calibrated(W: Any, a_shape: Any, b_shape: Any, density: float, rank: int = 1,
                            n_iter: int = 10, *, tol: float = 1e-6, input_gram: Any = None,
                            input_scale: Any = None, ridge: float = 1e-6,
                            als_sweeps: int = 2, start: DopedKronecker | None = None) -> DopedKronecker:
    """Fit ``W ≈ sum_r kron(A[r], B[r]) + S`` minimizing err_C = trace(D C Dᵀ), D = W − Ŵ.

    Starts from the weights-only ``lpfast.doped_kp_fit`` (same arguments) and alternates,
    keeping the best iterate on err_C (so never worse than that start):

    * the Kronecker factors, refit under the *full* C by alternating least squares
      (``als_sweeps`` sweeps of: A exact given B, B exact given A). The full C is affordable
      because each half-step is one (R*n1)² (resp. (R*n2)²) system shared by all rows, built
      in O(R² in²) flops; a Kronecker-factored C ≈ C1 ⊗ C2 would be cheaper still but
      only approximate, and layer inputs are far from Kronecker-structured;
    * S chosen by the whitened residual R = W − K: the entries with the largest
      |(R C)_ij| / sqrt(C_jj), then each row's values refit exactly on its support.

    Parameters
    ----------
    W : array_like, shape (m1*m2, n1*n2), float32 or float64
    a_shape, b_shape, density, rank, n_iter, tol
        As in ``lpfast.doped_kp_fit`` (the start uses them; ``n_iter`` also bounds the
        calibrated rounds, at least one).
    input_gram : array_like, shape (in, in), optional
        C = XᵀX of the layer's inputs; ``input_scale`` (shape (in,)): C = diag(s).
        Neither, or C = c·I: the weights-only fit is returned unchanged.
    ridge : float >= 0
        The fit runs under C + ridge·(trace(C)/in)·I (invertible for rank-deficient C);
        iterates are compared on err_C itself.
    als_sweeps : int >= 1
    start : DopedKronecker, optional
        A weights-only fit of W with these shapes, rank and nnz to start from (and to be
        never worse than) instead of running ``doped_kp_fit``; its bias is ignored.

    Returns
    -------
    DopedKronecker with ``fit_info``: the start's ``relative_error`` history,
    ``calibration_error`` (relative err_C of the result), ``weights_only_error`` (that of
    the start), ``history`` and ``chosen`` ("calibrated" or "weights_only").

    Cost per round: O(m in²) for T C and R C, O(R² in²) per half-sweep, the per-row
    solves of the doping (Σ_rows |J|³); float64, the result cast to W's dtype.
    """
    if start is None:
        start = doped_kp_fit(W, a_shape, b_shape, density, rank, n_iter, tol=tol)
    else:
        _check_start(start, W, a_shape, b_shape, density, rank)
    W = tensor_as_numpy(W, "W") if hasattr(W, "detach") else as_ndarray(W, "W")
    gram = as_gram(input_gram, input_scale, start.shape[1])
    ridge = as_ridge(ridge)
    als_sweeps = as_int(als_sweeps, "als_sweeps", low=1)
    tol = as_float(tol, "tol", low=0.0)
    if gram is None or gram.isotropic:
        return start
    dtype, shape = start.dtype, start.shape
    W64 = np.asarray(W, dtype=np.float64)
    fitted = gram.ridged(ridge)
    fitted.whitener()  # the Cholesky factor is the positive-definiteness check of C
    C4 = fitted.dense().reshape(*(start.a_shape[1], start.b_shape[1]) * 2)
    base = gram.error(W64) or 1.0

    def score(A, B, pos, vals):  # relative err_C of the fit as stored (W's dtype)
        S = dense_sparse(pos, vals.astype(dtype), shape)
        return gram.error(W64 - _kron_sum(A.astype(dtype).astype(np.float64), B.astype(dtype)) - S) / base

    S0 = start.S
    rows = np.repeat(np.arange(shape[0]), np.diff(S0.indptr)) if S0 is not None else None
    pos = np.zeros(0, dtype=np.intp) if S0 is None else rows * shape[1] + S0.indices
    vals = np.zeros(0) if S0 is None else S0.data.astype(np.float64)
    A, B = start.A.astype(np.float64), start.B.astype(np.float64)
    weights_only = score(A, B, pos, vals)
    best, history = (weights_only, None), [weights_only]
    m1, m2, n1, n2 = start.a_shape[0], start.b_shape[0], start.a_shape[1], start.b_shape[1]
    for _ in range(max(n_iter, 1)):
        P4 = fitted.times(W64 - dense_sparse(pos, vals, shape)).reshape(m1, m2, n1, n2)
        for _ in range(als_sweeps):
            A = _refit_first(P4, C4, B)
            B = _refit_second(P4, C4, A)
        A, B = _balance(A, B)
        pos, vals = doping(W64 - _kron_sum(A, B), fitted, start.nnz, previous=pos,
                           previous_values=vals)
        history.append(score(A, B, pos, vals))
        if history[-1] < best[0]:
            best = (history[-1], (A, B, pos, vals))
        if history[-2] - history[-1] <= tol * history[0]:
            break
    if best[1] is None:
        op = start
        chosen = "weights_only"
    else:
        A, B, pos, vals = best[1]
        S = csr_parts(pos, vals, shape, dtype) if start.nnz else None
        op = DopedKronecker(A.astype(dtype), B.astype(dtype), S)
        chosen = "calibrated"
    op.fit_info = {**start.fit_info, "calibration_error": best[0], "weights_only_error": weights_only,
                   "history": history, "chosen": chosen}
    return op
