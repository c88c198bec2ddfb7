"""Pure-NumPy/SciPy reference implementations: slow, obviously correct, the ground truth.

Tests and benchmarks compare the compiled kernels against these. Written for clarity:
no validation, no tricks; each mirrors the definition in DESIGN.md.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["doped_kp_matmul", "doped_lstm_forward", "kron_dense", "nearest_kronecker",
           "lp_subspace", "lp_subspace_eps", "subspace_cost", "subspace_distances",
           "weighted_svd_basis",
           "k_subspaces_assign", "k_subspaces_lloyd",
           "leverage_scores", "lewis_weights", "lewis_sample"]


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


def doped_lstm_forward(xs, layers, h0=None, c0=None):
    """torch.nn.LSTM's recurrence (batch-first, gates [i, f, g, o]) with dense matrices.

    xs: (batch, T, I); layers: per layer (W_ih (4H, I_l), W_hh (4H, H), bias (4H,) or None),
    e.g. W = kron_dense(A, B, S); h0, c0: (num_layers, batch, H), zeros when None.
    Returns ys (batch, T, H) and (h_n, c_n), computed in the inputs' result dtype.
    """
    xs = np.asarray(xs)
    dtype = np.result_type(xs, *(w for layer in layers for w in layer if w is not None))
    H = np.asarray(layers[0][1]).shape[1]
    shape = (len(layers), xs.shape[0], H)
    h = np.zeros(shape, dtype) if h0 is None else np.array(h0, dtype=dtype)
    c = np.zeros(shape, dtype) if c0 is None else np.array(c0, dtype=dtype)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    ys = np.empty((xs.shape[0], xs.shape[1], H), dtype)
    for t in range(xs.shape[1]):
        inp = xs[:, t].astype(dtype)
        for li, (W_ih, W_hh, bias) in enumerate(layers):
            z = inp @ np.asarray(W_ih).T + h[li] @ np.asarray(W_hh).T
            if bias is not None:
                z = z + bias
            i, f, g, o = np.split(z, 4, axis=1)
            c[li] = sigmoid(f) * c[li] + sigmoid(i) * np.tanh(g)
            h[li] = sigmoid(o) * np.tanh(c[li])
            inp = h[li]
        ys[:, t] = inp
    return ys, (h, c)


def nearest_kronecker(W, a_shape, b_shape, rank=1):
    """(A, B), shapes (rank, m1, n1) and (rank, m2, n2): top-rank SVD of Van Loan's R(W)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    R = W.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    U, s, Vt = np.linalg.svd(R, full_matrices=False)
    A = np.stack([np.sqrt(s[r]) * U[:, r].reshape(m1, n1) for r in range(rank)])
    B = np.stack([np.sqrt(s[r]) * Vt[r].reshape(m2, n2) for r in range(rank)])
    return A, B


# -- lp subspace (IRLS) --------------------------------------------------------------------


def _fixed_signs(V):
    """Each column's largest-magnitude entry made positive (first one on ties)."""
    at = np.argmax(np.abs(V), axis=0)
    flip = np.where(V[at, np.arange(V.shape[1])] < 0, -1, 1).astype(V.dtype)
    return V * flip


def subspace_distances(X, V):
    """dist(x_i, V) = ||x_i - V V^T x_i||_2 for every row of X (explicit residuals)."""
    return np.linalg.norm(X - (X @ V) @ V.T, axis=1)


def subspace_cost(X, V, p, weights=None):
    """sum_i w_i * dist(x_i, V)^p, summed in float64."""
    dist = subspace_distances(X, V).astype(np.float64) ** p
    return float(dist.sum() if weights is None else np.asarray(weights, np.float64) @ dist)


def lp_subspace_eps(X, weights=None):
    """Default distance floor: sqrt(finfo(X.dtype).eps) * weighted RMS row norm (1 if zero)."""
    sq = np.sum(np.asarray(X, np.float64) ** 2, axis=1)
    w = np.ones(len(X)) if weights is None else np.asarray(weights, np.float64)
    rms = np.sqrt(w @ sq / w.sum())
    return float(np.sqrt(np.finfo(X.dtype).eps) * rms) if rms > 0 else 1.0


def weighted_svd_basis(X, omega, k):
    """Top-k right singular vectors (d, k) of sqrt(omega) * X, signs fixed."""
    _, _, Vt = np.linalg.svd(np.sqrt(omega)[:, None] * X, full_matrices=False)
    return _fixed_signs(Vt[:k].T)


def lp_subspace(X, k, p=1.0, weights=None, max_iter=100, tol=1e-6, eps=None, init=None):
    """IRLS for min_V sum_i w_i dist(x_i, V)^p, one full SVD of the reweighted X per step.

    Start: the SVD basis of sqrt(w) X (or ``init``, assumed orthonormal). Step:
    omega_i = w_i * max(dist_i, eps)^(p - 2), V <- top-k right singular vectors of
    sqrt(omega) X. After a step from cost c to c': for p > 2 a step with c' > c is rejected
    and the fit stops; otherwise the step is kept and the fit stops (converged) when
    c - c' <= tol * c. A start cost of 0 is converged at once, and so is p = 2 from the
    SVD start (it is the p = 2 optimum).

    Returns (V (d, k), history: list of costs, n_iter, converged).
    """
    X = np.asarray(X)
    dtype = X.dtype
    w = np.ones(len(X), dtype) if weights is None else np.asarray(weights, dtype)
    eps = lp_subspace_eps(X, weights) if eps is None else eps
    V = weighted_svd_basis(X, w, k) if init is None else np.asarray(init, dtype)
    cost = subspace_cost(X, V, p, w)
    history, n_iter = [cost], 0
    if cost == 0 or (p == 2 and init is None):
        return V, history, 0, True
    for it in range(1, max_iter + 1):
        dist = np.maximum(subspace_distances(X, V).astype(np.float64), eps)
        omega = w * dist ** (p - 2)
        V_new = weighted_svd_basis(X, (omega / omega.max()).astype(dtype), k)
        new_cost = subspace_cost(X, V_new, p, w)
        if p > 2 and new_cost > cost:
            return V, history, n_iter, abs(cost - new_cost) <= tol * cost
        V, n_iter = V_new, it
        history.append(new_cost)
        done = cost - new_cost <= tol * cost
        cost = new_cost
        if done:
            return V, history, n_iter, True
    return V, history, n_iter, False


# -- projective clustering (k-subspaces) --

def k_subspaces_assign(X, bases):
    """(labels, squared distances) of every row to its nearest of the k bases (k, d, j).

    dist^2 = ||x||^2 - ||V_c^T x||^2 from one product with the stacked bases (d, k*j);
    ties go to the lowest cluster index (np.argmin).
    """
    k, d, j = bases.shape
    n = X.shape[0]
    P = X @ bases.transpose(1, 0, 2).reshape(d, k * j)
    proj = np.square(P.reshape(n, k, j), dtype=np.float64).sum(axis=2)
    xn2 = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    d2 = np.maximum(xn2[:, None] - proj, 0.0)
    labels = np.argmin(d2, axis=1)
    return labels, d2[np.arange(n), labels]


def _ks_top(G, j):
    """Top-j eigenvectors of the symmetric G (np.linalg.eigh, in G's dtype)."""
    _, V = np.linalg.eigh(G)
    return V[:, ::-1][:, :j].astype(np.float64)


def _ks_group_basis(Xs, j, d):
    """Top-j right singular vectors of the rows Xs, completed with e_0, e_1, ... if rank < j."""
    cols = []
    if Xs.shape[0]:
        _, s, Vt = np.linalg.svd(Xs.astype(np.float64), full_matrices=False)
        cols = [v for v, sv in zip(Vt, s) if sv**2 > 1e-10 * s[0] ** 2][:j]
    V = np.zeros((d, j))
    have = 0
    for v in cols + list(np.eye(d)):
        if have == j:
            break
        v = v - V[:, :have] @ (V[:, :have].T @ v)
        if np.linalg.norm(v) > 0.5:
            V[:, have] = v / np.linalg.norm(v)
            have += 1
    return V


def k_subspaces_lloyd(X, init_bases, p=2.0, weights=None, max_iter=100, tol=1e-6, eps=0.0,
                      irls_steps=3):
    """Lloyd's k-subspaces from init_bases (k, d, j): (bases, labels, cost, n_iter, history).

    Per iteration: empty clusters take the next j rows of the worst-served order (largest
    w * dist^p, ties by lowest row) as their basis; then each cluster's V_c = top-j of
    sum w x x^T (p = 2), or irls_steps IRLS steps with omega = w * max(dist, eps)^(p - 2)
    (p != 2); then all rows are reassigned. Stops when the cost drops by at most tol * cost;
    returns the iterate of lowest cost.
    """
    X = np.asarray(X)
    n, d = X.shape
    k, _, j = init_bases.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    V = [np.linalg.qr(np.asarray(B, dtype=np.float64))[0] for B in init_bases]

    def stacked(V):
        return np.stack(V).astype(X.dtype)

    def cost_of(d2):
        return float(np.sum(w * np.maximum(d2, 0.0) ** (p / 2)))

    labels, d2 = k_subspaces_assign(X, stacked(V))
    cost = cost_of(d2)
    best = (list(V), labels, cost)
    history, n_iter, prev = [cost], 0, cost
    for it in range(1, max_iter + 1):
        empty = [c for c in range(k) if not np.any(labels == c)]
        if empty:
            score = w * d2 ** (p / 2)
            order = np.lexsort((np.arange(n), -score))
            g = max(1, min(j, n // len(empty)))
            take = min(n, g * len(empty))
            for e, c in enumerate(empty):
                rows = order[min(take, e * g):min(take, (e + 1) * g)]
                V[c] = _ks_group_basis(X[rows], j, d)
        for c in range(k):
            idx = np.flatnonzero(labels == c)
            if idx.size == 0:
                continue
            Xc = X[idx]
            if p == 2:
                Xs = Xc * np.sqrt(w[idx]).astype(X.dtype)[:, None]
                V[c] = _ks_top(Xs.T @ Xs, j)
                continue
            dc = d2[idx]
            for s in range(irls_steps):
                if s > 0:
                    Vc = V[c].astype(X.dtype)
                    dc = np.maximum(np.einsum("ij,ij->i", Xc, Xc, dtype=np.float64)
                                    - np.square(Xc @ Vc, dtype=np.float64).sum(axis=1), 0.0)
                omega = w[idx] * np.maximum(np.sqrt(dc), eps) ** (p - 2)
                Xs = Xc * np.sqrt(omega).astype(X.dtype)[:, None]
                V[c] = _ks_top(Xs.T @ Xs, j)
        labels, d2 = k_subspaces_assign(X, stacked(V))
        cost = cost_of(d2)
        history.append(cost)
        n_iter = it
        if cost < best[2]:
            best = (list(V), labels, cost)
        if not prev - cost > tol * prev:
            break
        prev = cost
    return np.stack(best[0]), best[1], best[2], n_iter, history


# -- Lewis weights and coresets --


def _pinv_quadratic_forms(X, s):
    """x_i^T (X^T diag(s) X)^+ x_i, from an eigendecomposition of the Gram in float64.

    The Gram is equilibrated to unit diagonal and eigenvalues at most 100 d eps(float64)
    times the largest are dropped (lpfast's documented rank rule).
    """
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    M = X.T @ (s[:, None] * X)
    diag = np.diag(M).copy()
    scale = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)), 0.0)
    lam, Q = np.linalg.eigh(scale[:, None] * M * scale[None, :])
    keep = lam > 100 * d * np.finfo(np.float64).eps * max(lam.max(), 0.0)
    B = scale[:, None] * Q[:, keep] / np.sqrt(lam[keep])
    return np.sum((X @ B) ** 2, axis=1)


def leverage_scores(X):
    """Leverage scores from a thin QR: ||Q_i||^2 (X of full column rank)."""
    Q, _ = np.linalg.qr(np.asarray(X, dtype=np.float64))
    return np.sum(Q**2, axis=1)


def lewis_weights(X, p=1.0, tol=1e-8, max_iter=1000):
    """lp Lewis weights by the plain Cohen-Peng iteration from w = 1, in float64.

    w_i <- (x_i^T (X^T W^(1-2/p) X)^+ x_i)^(p/2) until max_i |w_new - w| / w <= tol
    (zero rows keep weight 0). Returns float64 weights.
    """
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(X.shape[0])
    for _ in range(max_iter):
        pos = w > 0
        s = np.zeros_like(w)
        s[pos] = w[pos] ** (1 - 2 / p)
        new = np.maximum(_pinv_quadratic_forms(X, s), 0.0) ** (p / 2)
        change = np.max(np.abs(new[pos] - w[pos]) / w[pos], initial=0.0)
        w = new
        if change <= tol:
            break
    return w


def lewis_sample(X, m, p=1.0, seed=None, uniform=0.1, tol=1e-6):
    """(indices, weights): m i.i.d. draws with q = (1-uniform) w/sum(w) + uniform/n,
    each draw weighing 1/(m q_i), duplicates merged; the draws are
    ``np.random.default_rng(seed).choice(n, m, p=q)`` exactly as in lpfast."""
    X = np.asarray(X)
    n = X.shape[0]
    lw = lewis_weights(X, p, tol=tol)
    q = (1 - uniform) * lw / lw.sum() + uniform / n if lw.sum() > 0 else np.full(n, 1.0 / n)
    q = q / q.sum()
    draws = np.random.default_rng(seed).choice(n, size=m, replace=True, p=q)
    idx, counts = np.unique(draws, return_counts=True)
    return idx, (counts / (m * q[idx])).astype(X.dtype)


def row_doped_n_params(method, n, d, rank, n_exact, n_subspaces=1):
    """Numbers a row-doped factorization stores, counted from its definition: low rank
    stores U for the n - R other rows (k each), Vt (k x d), R exact rows (d each) and their
    R indices; projective stores per other row a label and j coefficients, K bases (d x j),
    and the exact rows with their indices."""
    R = n_exact
    exact = R * d + R
    if method == "projective":
        return (n - R) * 1 + (n - R) * rank + n_subspaces * d * rank + exact
    return (n - R) * rank + rank * d + exact


def row_doped_reconstruct(state):
    """The (n, d) matrix a ``RowDoped.to_dict()`` state stands for, row by row."""
    n, d = state["n_rows"], state["n_cols"]
    exact = {int(i): s for s, i in enumerate(state["exact_indices"])}
    out = np.zeros((n, d), dtype=np.asarray(state["exact_rows"]).dtype)
    t = 0
    for i in range(n):
        if i in exact:
            out[i] = state["exact_rows"][exact[i]]
            continue
        if state["method"] == "projective":
            V = state["bases"][state["labels"][t]]
            out[i] = V @ state["coefficients"][t]
        else:
            out[i] = state["U"][t] @ state["Vt"]
        t += 1
    return out


__all__ += ["row_doped_n_params", "row_doped_reconstruct"]
