"""Input statistics of a Linear layer, and the pieces every calibrated fit shares (internal).

A Linear weight W (out, in) maps inputs X (N, in) to X Wᵀ. An approximation Ŵ then costs

    err_C(Ŵ) = ‖X (W − Ŵ)ᵀ‖_F² = trace((W − Ŵ) C (W − Ŵ)ᵀ),   C = XᵀX = L Lᵀ  (in, in),

or, from per-feature second moments s only, C = diag(s). :class:`Gram` holds a validated C
(float64, full or diagonal) and computes with it; :func:`doping` picks and fits the sparse
part S of a fit under C. Made for sharing by ``calibrated.py`` and ``calibrated_kron.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from ._validate import as_float, as_float_array

# Relative asymmetry |C - Cᵀ| / max|C| accepted (and symmetrized away): a Gram summed in
# float32 and then converted is symmetric only to ~1e-7.
_SYMMETRY_TOL = 1e-5
# Largest (rows x k x k) block of per-row normal equations solved at once in `doping`.
_BLOCK = 1 << 22


class Gram:
    """A validated input Gram C (``full``, (n, n)) or its diagonal (``diag``, (n,)), float64."""

    __slots__ = ("full", "diag", "n")

    def __init__(self, full: np.ndarray | None, diag: np.ndarray | None):
        self.full, self.diag = full, diag
        self.n = (full if full is not None else diag).shape[0]

    @property
    def diagonal(self) -> np.ndarray:
        return self.diag if self.diag is not None else np.diagonal(self.full)

    @property
    def isotropic(self) -> bool:
        """C = c·I: err_C = c·‖W − Ŵ‖², so every fit is the weights-only fit."""
        d = self.diagonal
        if not np.all(d == d[0]):
            return False
        if self.diag is not None:
            return True
        off = self.full.copy()
        off[np.diag_indices(self.n)] = 0
        return not off.any()

    @property
    def mean_diagonal(self) -> float:
        return float(self.diagonal.mean())

    def dense(self) -> np.ndarray:
        return self.full if self.full is not None else np.diag(self.diag)

    def times(self, D: np.ndarray) -> np.ndarray:
        """D @ C for D of shape (m, n), float64."""
        return D @ self.full if self.full is not None else D * self.diag

    def error(self, D: np.ndarray) -> float:
        """trace(D C Dᵀ) = err_C for the difference D = W − Ŵ (float64 accumulation)."""
        D = np.asarray(D, dtype=np.float64)
        return max(float(np.einsum("ij,ij->", self.times(D), D)), 0.0)

    def ridged(self, ridge: float) -> Gram:
        """C + ridge·(trace(C)/n)·I: positive definite unless C = 0 (then returned as is)."""
        shift = ridge * self.mean_diagonal
        if shift == 0:
            return self
        if self.diag is not None:
            return Gram(None, self.diag + shift)
        full = self.full.copy()
        full[np.diag_indices(self.n)] += shift
        return Gram(full, None)

    def whitener(self):
        """(L, unwhiten) with C = L Lᵀ: ``W @ L`` whitens, ``unwhiten(Q)`` returns Qᵀ L⁻¹.

        C must be positive definite (``ridged`` first). L is the Cholesky factor (n³/3
        flops); if rounding defeats Cholesky, the eigendecomposition with eigenvalues
        floored at n·eps·λ_max is used instead.
        """
        if self.diag is not None:
            root = np.sqrt(self.diag)
            return np.diag(root), lambda Q: Q.T / root
        try:
            L = scipy.linalg.cholesky(self.full, lower=True, check_finite=False)
            return L, lambda Q: scipy.linalg.solve_triangular(
                L, Q, lower=True, trans="T", check_finite=False).T
        except np.linalg.LinAlgError:
            check_psd(self)
            lam, E = np.linalg.eigh(self.full)
            lam = np.maximum(lam, self.n * np.finfo(np.float64).eps * max(lam[-1], 0.0))
            root = np.sqrt(lam)
            return E * root, lambda Q: (Q.T / root) @ E.T


def as_gram(input_gram: Any, input_scale: Any, n: int) -> Gram | None:
    """Validate ``input_gram`` (n, n) or ``input_scale`` (n,) for a weight with n inputs.

    Returns None when neither is given. Raises ValueError for a wrong shape, NaN/Inf, an
    asymmetric Gram, negative second moments or a Gram that is not positive semidefinite
    (checked on the diagonal here; the fits check the rest when they factor C).
    """
    if input_gram is not None and input_scale is not None:
        msg = "input_gram, input_scale: give one of them, not both"
        raise ValueError(msg)
    if input_scale is not None:
        s = as_float_array(input_scale, "input_scale", np.float64, ndim=1)
        if s.shape != (n,):
            msg = f"input_scale: expected shape ({n},) (the weight's in_features), got {s.shape}"
            raise ValueError(msg)
        if (s < 0).any():
            msg = "input_scale: second moments must be >= 0, found a negative entry"
            raise ValueError(msg)
        return Gram(None, s)
    if input_gram is None:
        return None
    C = as_float_array(input_gram, "input_gram", np.float64, ndim=2)
    if C.shape != (n, n):
        msg = f"input_gram: expected shape ({n}, {n}) (the weight's in_features), got {C.shape}"
        raise ValueError(msg)
    scale = float(np.abs(C).max()) if C.size else 0.0
    if scale and float(np.abs(C - C.T).max()) > _SYMMETRY_TOL * scale:
        msg = "input_gram: not symmetric (expected XᵀX of the layer's inputs)"
        raise ValueError(msg)
    if (np.diagonal(C) < 0).any():
        msg = "input_gram: negative diagonal entry, not positive semidefinite"
        raise ValueError(msg)
    return Gram((C + C.T) * 0.5, None)


def check_psd(gram: Gram) -> None:
    """Raise ValueError if the full Gram has an eigenvalue below -sqrt(eps)·λ_max (O(n³))."""
    if gram.full is None:
        return
    lam = np.linalg.eigvalsh(gram.full)
    if lam[0] < -np.sqrt(np.finfo(np.float64).eps) * max(lam[-1], 0.0):
        msg = f"input_gram: not positive semidefinite (smallest eigenvalue {lam[0]:.3g})"
        raise ValueError(msg)


def as_ridge(ridge: Any) -> float:
    return as_float(ridge, "ridge", low=0.0)


def top_positions(score: np.ndarray, nnz: int) -> np.ndarray:
    """Sorted flat positions of the ``nnz`` largest entries of ``score`` (ties: lowest index)."""
    flat = score.ravel()
    if nnz >= flat.size:
        return np.arange(flat.size)
    if nnz <= 0:
        return np.zeros(0, dtype=np.intp)
    return np.sort(np.argpartition(-flat, nnz - 1, kind="introselect")[:nnz])


def _solve_rows(RC: np.ndarray, C: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                counts: np.ndarray) -> np.ndarray:
    """Exact values on a support: per row C_JJ s_J = (r C)_J, batched over rows with the same
    support size (blocks of at most _BLOCK entries of C_JJ)."""
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    values = np.empty(cols.size)
    for k in np.unique(counts[counts > 0]):
        members = np.flatnonzero(counts == k)
        step = max(1, _BLOCK // (k * k))
        for lo in range(0, members.size, step):
            rs = members[lo:lo + step]
            slots = starts[rs][:, None] + np.arange(k)  # (rows, k) indices into the support
            J = cols[slots]
            values[slots] = np.linalg.solve(C[J[:, :, None], J[:, None, :]],
                                            RC[rs[:, None], J][..., None])[..., 0]
    return values


def _cg_rows(RC: np.ndarray, C: np.ndarray, pos: np.ndarray, start: np.ndarray | None,
             iters: int, rtol: float = 1e-4) -> tuple[np.ndarray, float]:
    """The same per-row systems by Jacobi-preconditioned conjugate gradients, all rows at
    once on dense masked (m, n) arrays: O(iters · m n²) flops and O(m n) memory instead of
    Σ_rows |J|³ and Σ_rows |J|² (a half-dense S of a 384 x 1536 weight has |J| ≈ 750).

    ``start`` (dense (m, n), used on the support only) warm-starts it; every iteration
    lowers each row's objective, so the result is never worse than the start. Stops after
    ``iters`` iterations or once the preconditioned residual is ``rtol`` times that of a
    cold start (values to about that relative accuracy: float32 storage needs no more).
    Returns (values on pos, decrease of the objective from S = 0).
    """
    m, n = RC.shape
    mask = np.zeros(m * n, dtype=bool)
    mask[pos] = True
    mask = mask.reshape(m, n)
    inv_d = 1.0 / np.diagonal(C)
    cold = RC * mask
    floor = rtol * rtol * float(np.einsum("ij,ij->", cold, cold * inv_d))
    S = np.zeros((m, n)) if start is None else start * mask
    resid = cold if start is None else (RC - S @ C) * mask  # -gradient of (r − s)ᵀC(r − s)/2
    z = resid * inv_d
    P, rz = z, np.einsum("ij,ij->i", resid, z)
    for _ in range(iters):
        if float(rz.sum()) <= floor:
            break
        AP = (P @ C) * mask
        curv = np.einsum("ij,ij->i", P, AP)
        alpha = np.divide(rz, curv, out=np.zeros_like(rz), where=curv > 0)
        S += alpha[:, None] * P
        resid -= alpha[:, None] * AP
        z = resid * inv_d
        rz_new = np.einsum("ij,ij->i", resid, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        P, rz = z + beta[:, None] * P, rz_new
    # 2<S, RC> - <S, SC> = <S, RC> + <S, RC - SC>, the last term being <S, resid>.
    return S.ravel()[pos], float(np.einsum("ij,ij->", S, RC) + np.einsum("ij,ij->", S, resid))


#: Conjugate-gradient iterations of a refit too large to solve row by row exactly.
CG_ITERS = 30


def _refit_rows(RC: np.ndarray, C: np.ndarray, pos: np.ndarray,
                start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Values of S on the sorted flat support ``pos`` minimizing Σ_i (r_i − s_i)ᵀ C (r_i − s_i),
    and the decrease of that objective they achieve, 2⟨S, R C⟩ − ⟨S, S C⟩.

    Exact (per-row solves) while Σ_rows |J|²(|J| + 50) stays below CG_ITERS full
    products m n² (the cost of the alternative); else :func:`_cg_rows` from ``start``
    (dense (m, n), or 0), the fastest decrease per flop at high density.
    """
    m, n = RC.shape
    rows, cols = np.divmod(pos, n)
    counts = np.bincount(rows, minlength=m)
    exact_cost = float(np.sum(counts.astype(np.float64) ** 2 * (counts + 50)))
    if exact_cost <= CG_ITERS * m * float(n) ** 2:
        values = _solve_rows(RC, C, rows, cols, counts)
        return values, float(RC.ravel()[pos] @ values)
    return _cg_rows(RC, C, pos, start, CG_ITERS)


def doping(R: np.ndarray, gram: Gram | None, nnz: int, previous: np.ndarray | None = None,
           previous_values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The sparse part S (sorted flat positions, values) for a residual R = W − (the rest).

    Weights-only (``gram`` None): the nnz largest |R_ij|, valued R_ij (the exact optimum).

    Under C (positive definite: ``Gram.ridged``) the best support is a sparse regression
    per row; greedy supports are tried, each with every row's values refit exactly on it
    (C_JJ s_J = (r C)_J), and the one that lowers err_C most is kept:

    * no ``previous`` support: the nnz largest |(R C)_ij| / sqrt(C_jj) (the most entry
      (i, j) alone can cut err_C; best for skewed or ill-conditioned inputs) and the nnz
      largest |R_ij|·sqrt(C_jj) (C's diagonal alone; better with strongly correlated
      inputs, where single-entry gains overlap);
    * with ``previous``: that support, and one step of hard thresholding pursuit from it:
      the nnz largest |Z_ij|·sqrt(C_jj) of the Jacobi-preconditioned gradient step
      Z = S + ((R − S) C) / diag(C), S the previous support refit. (On real FFN inputs the
      from-scratch supports lose to the current one; this step can only swap entries in.)
      Keeping ``previous`` among the candidates makes an alternation monotone (with
      ``previous_values`` as the start of an iterative refit, see ``_refit_rows``).

    For a diagonal C the scores reduce to |R_ij|·sqrt(C_jj) and the refit to s_J = r_J.
    Cost: O(m n²) for R C (and S C) plus Σ_rows |J|³ per support.
    """
    if gram is None:
        pos = top_positions(np.abs(R), nnz)
        return pos, R.ravel()[pos].copy()
    root = np.sqrt(gram.diagonal)
    pos = top_positions(np.abs(R) * root, nnz)
    if previous is not None and previous.size != pos.size:
        previous = None
    if gram.diag is not None or pos.size == 0:
        if previous is not None:
            def gain(p):
                return float(np.sum(R.ravel()[p] ** 2 * gram.diagonal[p % R.shape[1]]))
            pos = max((pos, previous), key=gain)
        return pos, R.ravel()[pos].copy()
    RC = gram.times(R)
    if previous is None:
        candidates = [(pos, None), (top_positions(np.abs(RC) / root, nnz), None)]
    else:
        warm = None if previous_values is None else dense_sparse(previous, previous_values, R.shape)
        values, gain = _refit_rows(RC, gram.full, previous, start=warm)
        S = dense_sparse(previous, values, R.shape)
        Z = S + (RC - gram.times(S)) / gram.diagonal
        candidates = [(previous, (values, gain)), (top_positions(np.abs(Z) * root, nnz), None)]
    best = None
    for support, fitted in candidates:
        if best is not None and np.array_equal(support, best[0]):
            continue
        # Warm start on the new support: the refit previous values where the two overlap.
        values, gain = fitted if fitted is not None else _refit_rows(
            RC, gram.full, support, start=None if previous is None else S)
        if best is None or gain > best[2]:
            best = (support, values, gain)
    return best[0], best[1]


def dense_sparse(pos: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    S = np.zeros(shape)
    S.ravel()[pos] = values
    return S


def csr_parts(pos: np.ndarray, values: np.ndarray, shape: tuple[int, int], dtype):
    """(indptr, indices, data) of the matrix holding ``values`` at sorted flat ``pos``."""
    rows, cols = np.divmod(pos, shape[1])
    itype = np.int32 if max(shape[1], pos.size) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(shape[0] + 1, dtype=itype)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    return indptr, cols.astype(itype), values.astype(dtype)
