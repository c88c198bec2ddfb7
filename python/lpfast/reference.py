"""Pure-NumPy/SciPy reference implementations: slow, obviously correct, the ground truth.

Tests and benchmarks compare the compiled kernels against these. Written for clarity:
no validation, no tricks; each mirrors the definition in DESIGN.md.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["doped_kp_matmul", "kron_dense", "nearest_kronecker"]


def _as_rank3(M):
    M = np.asarray(M)
    return M[None] if M.ndim == 2 else M


def kron_dense(A, B, S=None):
    """W = sum_r kron(A[r], B[r]) (+ S) as a dense array."""
    A, B = _as_rank3(A), _as_rank3(B)
    W = sum(np.kron(a, b) for a, b in zip(A, B))
    if S is not None:
        W = W + (S.toarray() if sp.issparse(S) else np.asarray(S))
    return W


def doped_kp_matmul(x, A, B, S=None, bias=None):
    """x @ W.T + bias via the reshape identity Y = A X B^T per row, and SciPy for S.

    x: (..., n1*n2); A: (R, m1, n1) or (m1, n1); B likewise; S: SciPy sparse (m, n).
    """
    A, B = _as_rank3(A), _as_rank3(B)
    _, m1, n1 = A.shape
    _, m2, n2 = B.shape
    x = np.asarray(x)
    lead = x.shape[:-1]
    X = x.reshape(-1, n1, n2)
    Y = sum(a @ X @ b.T for a, b in zip(A, B))  # (N, m1, m2)
    y = Y.reshape(-1, m1 * m2)
    if S is not None:
        y = y + (sp.csr_array(S) @ x.reshape(-1, n1 * n2).T).T
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, m1 * m2)


def nearest_kronecker(W, a_shape, b_shape, rank=1):
    """(A, B), shapes (rank, m1, n1) and (rank, m2, n2): top-rank SVD of Van Loan's R(W)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    R = W.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    U, s, Vt = np.linalg.svd(R, full_matrices=False)
    A = np.stack([np.sqrt(s[r]) * U[:, r].reshape(m1, n1) for r in range(rank)])
    B = np.stack([np.sqrt(s[r]) * Vt[r].reshape(m2, n2) for r in range(rank)])
    return A, B
