"""Calibrated (data-aware) fits of Linear weights: lpfast.calibrated and lpfast.calibrated_kron.

Layout:
  helpers                      input Grams of several kinds (random, rank-deficient,
                               ill-conditioned, outlier features, correlated)
  calibration_error            against ‖(W − Ŵ) Xᵀ‖² from the inputs themselves
  C = c·I                      every fit is exactly its weights-only fit
  never worse                  each fit against its weights-only fit on err_C
  dense recomputation          whitened SVD via an explicit eigendecomposition, the row
                               refit of S, the exact Kronecker factor refit (lstsq)
  LowRankSparse object         product, to_dense, to_dict round trip
  bad input                    every rejection names its argument
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lpfast
from lpfast import (
    DopedKronecker,
    LowRankSparse,
    calibration_error,
    doped_kp_fit,
    doped_kp_fit_calibrated,
    lowrank_fit,
    lowrank_sparse_fit,
)

DTYPES = [np.float32, np.float64]
# err_C of a float32 result is taken on its float32 product (to_dense), the fits compare
# their candidates on the float64 product of the same stored factors: equal to ~1e-6.
SLACK = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}
KINDS = ["random", "deficient", "ill", "outliers", "correlated"]


def inputs(kind: str, n: int, rng: np.random.Generator, samples: int = 400) -> np.ndarray:
    """Calibration inputs X (samples, n) of a given character."""
    X = rng.standard_normal((samples, n))
    if kind == "random":
        return X * np.exp(rng.standard_normal(n))
    if kind == "deficient":  # fewer samples than features, and two dead features
        X = rng.standard_normal((n // 3, n))
        X[:, :2] = 0
        return X
    if kind == "ill":  # singular values spread over 10 decades
        Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        return X @ (Q * np.logspace(0, -5, n)) @ Q.T
    if kind == "outliers":  # a few features 100x the rest, as in transformer activations
        X[:, rng.choice(n, 3, replace=False)] *= 100.0
        return X
    if kind == "correlated":
        return X @ rng.standard_normal((n, n)) + 3.0
    raise AssertionError(kind)


def gram(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    X = inputs(kind, n, rng)
    return X.T @ X


def weight(m: int, n: int, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """A weight with decaying spectrum plus a few large entries (not exactly low rank)."""
    W = rng.standard_normal((m, n)) @ np.diag(np.linspace(1.0, 0.1, n))
    W[rng.integers(0, m, 5), rng.integers(0, n, 5)] += 5.0
    return W.astype(dtype)


def err(W, approx, C) -> float:
    return calibration_error(W, approx, input_gram=C)


# -- calibration_error --------------------------------------------------------------------------

def test_calibration_error_is_output_error_on_the_inputs():
    rng = np.random.default_rng(0)
    W, W_hat = weight(12, 9, rng), weight(12, 9, rng)
    X = inputs("random", 9, rng, samples=50)
    want = float(np.linalg.norm(X @ (W - W_hat).T) ** 2)
    assert calibration_error(W, W_hat, X.T @ X) == pytest.approx(want, rel=1e-12)
    assert calibration_error(W, W_hat, X.T @ X, relative=True) == pytest.approx(
        want / np.linalg.norm(X @ W.T) ** 2, rel=1e-12)
    s = (X ** 2).sum(0)
    assert calibration_error(W, W_hat, input_scale=s) == pytest.approx(
        calibration_error(W, W_hat, np.diag(s)), rel=1e-12)
    assert calibration_error(W, W_hat) == pytest.approx(np.linalg.norm(W - W_hat) ** 2, rel=1e-12)
    # Factor pairs and operators are accepted as Ŵ.
    U, V = lowrank_fit(W, 3)
    assert calibration_error(W, (U, V), X.T @ X) == calibration_error(W, U @ V, X.T @ X)
    op = lowrank_sparse_fit(W, 2, 0.1)
    assert calibration_error(W, op) == calibration_error(W, op.to_dense())
    assert calibration_error(W, W, relative=True) == 0.0
    assert calibration_error(np.zeros((2, 3)), np.ones((2, 3)), relative=True) == np.inf


# -- C = c·I gives the weights-only fit ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_identity_gram_is_exactly_the_weights_only_fit(dtype, shape):
    rng = np.random.default_rng(1)
    W = weight(*shape, rng, dtype)
    n = shape[1]
    U0, V0 = lowrank_fit(W, 4)
    for stats in ({"input_gram": np.eye(n)}, {"input_gram": 3.5 * np.eye(n)},
                  {"input_scale": np.full(n, 2.0)}):
        U, V = lowrank_fit(W, 4, **stats)
        assert U.dtype == dtype and np.array_equal(U, U0) and np.array_equal(V, V0)
        a, b = lowrank_sparse_fit(W, 3, 0.05, **stats), lowrank_sparse_fit(W, 3, 0.05)
        assert np.array_equal(a.to_dense(), b.to_dense())
    # The weights-only fit is the truncated SVD (to rounding).
    P, s, Qt = np.linalg.svd(W.astype(np.float64))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(U0 @ V0, (P[:, :4] * s[:4]) @ Qt[:4], atol=tol * s[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_gram_kron_is_exactly_doped_kp_fit(dtype):
    rng = np.random.default_rng(2)
    W = weight(12, 20, rng, dtype)
    base = doped_kp_fit(W, (3, 4), (4, 5), 0.05, rank=2)
    for stats in ({"input_gram": np.eye(20)}, {"input_scale": np.ones(20)}, {}):
        op = doped_kp_fit_calibrated(W, (3, 4), (4, 5), 0.05, rank=2, **stats)
        assert np.array_equal(op.to_dense(), base.to_dense())


# -- never worse than the weights-only fit ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_lowrank_never_worse(dtype, kind):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        W, C = weight(40, 24, rng, dtype), gram(kind, 24, rng)
        for rank in (1, 5, 23):
            U, V = lowrank_fit(W, rank, input_gram=C)
            assert U.shape == (40, rank) and V.shape == (rank, 24) and U.dtype == dtype
            assert err(W, (U, V), C) <= err(W, lowrank_fit(W, rank), C) * (1 + SLACK[W.dtype])
        s = np.diagonal(C)
        assert calibration_error(W, lowrank_fit(W, 5, input_scale=s), input_scale=s) <= \
            calibration_error(W, lowrank_fit(W, 5), input_scale=s) * (1 + SLACK[W.dtype])


def test_lowrank_whitening_helps_where_inputs_are_skewed():
    rng = np.random.default_rng(3)
    W, C = weight(40, 24, rng), gram("outliers", 24, rng)
    rel = calibration_error(W, lowrank_fit(W, 6, input_gram=C), C, relative=True)
    rel0 = calibration_error(W, lowrank_fit(W, 6), C, relative=True)
    assert rel < 0.2 * rel0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_lowrank_sparse_never_worse(dtype, kind):
    for seed in range(2):
        rng = np.random.default_rng(seed)
        W, C = weight(30, 16, rng, dtype), gram(kind, 16, rng)
        for rank, density in ((1, 0.02), (4, 0.1), (8, 0.3)):
            op = lowrank_sparse_fit(W, rank, density, input_gram=C, n_iter=3)
            base = lowrank_sparse_fit(W, rank, density, n_iter=3)
            assert op.dtype == dtype and op.nnz == round(density * W.size)
            assert err(W, op, C) <= err(W, base, C) * (1 + SLACK[W.dtype])
            assert op.fit_info["calibration_error"] == pytest.approx(
                calibration_error(W, op, C, relative=True), rel=SLACK[W.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_doped_kron_never_worse(dtype, kind):
    for seed in range(2):
        rng = np.random.default_rng(seed)
        W, C = weight(12, 20, rng, dtype), gram(kind, 20, rng)
        for rank, density in ((1, 0.0), (1, 0.05), (2, 0.2)):
            op = doped_kp_fit_calibrated(W, (3, 4), (4, 5), density, rank, n_iter=4, input_gram=C)
            base = doped_kp_fit(W, (3, 4), (4, 5), density, rank, n_iter=4)
            assert isinstance(op, DopedKronecker) and op.dtype == dtype
            assert op.rank == rank and op.nnz == base.nnz
            assert err(W, op, C) <= err(W, base, C) * (1 + SLACK[W.dtype])


def test_doped_kron_start_is_reused():
    rng = np.random.default_rng(10)
    W, C = weight(12, 20, rng), gram("outliers", 20, rng)
    base = doped_kp_fit(W, (3, 4), (4, 5), 0.1, 2, n_iter=3)
    a = doped_kp_fit_calibrated(W, (3, 4), (4, 5), 0.1, 2, n_iter=3, input_gram=C)
    b = doped_kp_fit_calibrated(W, (3, 4), (4, 5), 0.1, 2, n_iter=3, input_gram=C, start=base)
    assert np.array_equal(a.to_dense(), b.to_dense())
    with pytest.raises(ValueError, match="start: expected"):
        doped_kp_fit_calibrated(W, (3, 4), (4, 5), 0.2, 2, input_gram=C, start=base)
    with pytest.raises(TypeError, match="start: expected a DopedKronecker"):
        doped_kp_fit_calibrated(W, (3, 4), (4, 5), 0.1, 2, input_gram=C, start=W)


def test_doped_kron_calibrated_helps_and_input_scale_works():
    rng = np.random.default_rng(4)
    W, C = weight(24, 36, rng), gram("outliers", 36, rng)
    op = doped_kp_fit_calibrated(W, (4, 6), (6, 6), 0.05, input_gram=C)
    base = doped_kp_fit(W, (4, 6), (6, 6), 0.05)
    assert op.fit_info["chosen"] == "calibrated"
    assert err(W, op, C) < 0.5 * err(W, base, C)
    s = np.diagonal(C)
    op = doped_kp_fit_calibrated(W, (4, 6), (6, 6), 0.05, input_scale=s)
    assert calibration_error(W, op, input_scale=s) <= calibration_error(W, base, input_scale=s)


# -- dense recomputation ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(30, 12), (10, 16)])
def test_lowrank_equals_explicit_whitened_svd(kind, shape):
    rng = np.random.default_rng(5)
    W, C = weight(*shape, rng), gram(kind, shape[1], rng)
    ridge = 1e-6
    Cr = C + ridge * np.trace(C) / C.shape[0] * np.eye(C.shape[0])
    lam, E = np.linalg.eigh(Cr)
    L = E * np.sqrt(lam)  # C = L Lᵀ, a different factor than the code's Cholesky
    P, s, Qt = np.linalg.svd(W @ L)
    want = (P[:, :3] * s[:3]) @ Qt[:3] @ np.linalg.inv(L)
    U, V = lowrank_fit(W, 3, input_gram=C, ridge=ridge)
    # Compared through the output on the calibration inputs (directions C never saw are
    # fixed only by the ridge, which amplifies rounding there).
    X = np.linalg.cholesky(Cr).T
    np.testing.assert_allclose((U @ V) @ X.T, want @ X.T, atol=1e-6 * np.linalg.norm(W @ X.T))


def test_lowrank_sparse_rows_are_refit_exactly():
    rng = np.random.default_rng(6)
    W, C = weight(20, 14, rng), gram("correlated", 14, rng)
    op = lowrank_sparse_fit(W, 3, 0.15, input_gram=C, n_iter=2, ridge=1e-6)
    assert op.fit_info["chosen"] != "weights_only"
    Cr = C + 1e-6 * np.trace(C) / 14 * np.eye(14)
    R = W - op.U @ op.V
    S = op.S
    for i in range(W.shape[0]):
        J = S.indices[S.indptr[i]:S.indptr[i + 1]]
        if J.size:  # normal equations of min_s (r - s)ᵀ C (r - s) on the support
            want = np.linalg.solve(Cr[np.ix_(J, J)], (R[i] @ Cr)[J])
            np.testing.assert_allclose(S.data[S.indptr[i]:S.indptr[i + 1]], want, rtol=1e-8,
                                       atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("kind", ["correlated", "ill", "outliers"])
def test_dense_support_refit_by_cg_matches_the_exact_solve(kind):
    """Half-dense supports are refit by conjugate gradients: same values as the per-row
    solves once converged, and each iterate no worse than its start."""
    from lpfast._gram import _cg_rows, _refit_rows, _solve_rows, top_positions

    rng = np.random.default_rng(11)
    m, n = 24, 40
    C = gram(kind, n, rng)
    C[np.diag_indices(n)] += 1e-6 * np.trace(C) / n
    R = weight(m, n, rng)
    RC = R @ C
    pos = top_positions(rng.random((m, n)), m * n // 2)
    rows, cols = np.divmod(pos, n)
    exact = _solve_rows(RC, C, rows, cols, np.bincount(rows, minlength=m))
    np.testing.assert_allclose(_cg_rows(RC, C, pos, None, 400, rtol=1e-12)[0], exact,
                               rtol=1e-5, atol=1e-6 * np.abs(exact).max())

    start = np.zeros((m, n))
    start.ravel()[pos] = R.ravel()[pos]
    for iters in (1, 3, 10):
        values, gain = _cg_rows(RC, C, pos, start, iters)
        assert _objective_on(R, C, pos, values) <= _objective_on(R, C, pos, R.ravel()[pos]) * (1 + 1e-12)
        assert gain == pytest.approx(_objective_on(R, C, pos, np.zeros(pos.size))
                                     - _objective_on(R, C, pos, values), rel=1e-8)
    # The reported gain is the objective's decrease, on both paths.
    full = top_positions(rng.random((m, n)), m * n - 3)  # dense enough to take the CG path
    for support in (pos[: m * 2], full):
        values, gain = _refit_rows(RC, C, support)
        assert gain == pytest.approx(_objective_on(R, C, support, np.zeros(support.size))
                                     - _objective_on(R, C, support, values), rel=1e-8)


def _objective_on(R, C, pos, values):
    S = np.zeros(R.shape)
    S.ravel()[pos] = values
    return calibration_error(R, S, C)


def test_kron_factor_refit_is_the_least_squares_solution():
    from lpfast._gram import Gram
    from lpfast.calibrated_kron import _kron_sum, _refit_first, _refit_second

    rng = np.random.default_rng(7)
    (m1, n1), (m2, n2), R = (3, 2), (2, 4), 2
    T, C = weight(m1 * m2, n1 * n2, rng), gram("correlated", n1 * n2, rng)
    A, B = rng.standard_normal((R, m1, n1)), rng.standard_normal((R, m2, n2))
    Lt = np.linalg.cholesky(C).T  # ‖(T − K) L‖ = ‖(T − K) Lᵀ'‖ for C = L Lᵀ

    def lstsq(build, shape):  # minimize over the factor by brute-force least squares
        cols = []
        for k in range(int(np.prod(shape))):
            e = np.zeros(shape)
            e.flat[k] = 1.0
            cols.append((build(e) @ np.linalg.cholesky(C)).ravel())
        sol = np.linalg.lstsq(np.array(cols).T, (T @ np.linalg.cholesky(C)).ravel(), rcond=None)[0]
        return sol.reshape(shape)

    P4 = Gram(C, None).times(T).reshape(m1, m2, n1, n2)
    C4 = C.reshape(n1, n2, n1, n2)
    np.testing.assert_allclose(_refit_first(P4, C4, B), lstsq(lambda a: _kron_sum(a, B), A.shape),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(_refit_second(P4, C4, A), lstsq(lambda b: _kron_sum(A, b), B.shape),
                               rtol=1e-7, atol=1e-9)
    assert Lt.shape == C.shape


# -- LowRankSparse ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_low_rank_sparse_operator(dtype):
    rng = np.random.default_rng(8)
    U, V = rng.standard_normal((7, 2)).astype(dtype), rng.standard_normal((2, 5)).astype(dtype)
    S = sp.random(7, 5, density=0.3, format="csr", random_state=1, dtype=dtype)
    bias = rng.standard_normal(7).astype(dtype)
    op = LowRankSparse(U, V, S, bias)
    assert op.shape == (7, 5) and op.rank == 2 and op.nnz == S.nnz
    assert op.n_params == 14 + 10 + S.nnz + 7
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    want = x @ (U @ V + S.toarray()).T + bias
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(op(x), want, rtol=tol, atol=tol)
    assert op(x).dtype == dtype and op(x[0, 0]).shape == (7,)
    back = LowRankSparse.from_dict(op.to_dict())
    assert np.array_equal(back.to_dense(), op.to_dense()) and np.array_equal(back.bias, op.bias)
    assert np.array_equal(LowRankSparse(U, V)(x[0]), (x[0] @ V.T) @ U.T)
    with pytest.raises(ValueError, match="read-only"):
        op.U[0, 0] = 1.0


# -- bad input ----------------------------------------------------------------------------------

def test_bad_input():
    rng = np.random.default_rng(9)
    W, C = weight(8, 6, rng), gram("random", 6, rng)
    with pytest.raises(ValueError, match=r"input_gram: expected shape \(6, 6\)"):
        lowrank_fit(W, 2, input_gram=np.eye(5))
    with pytest.raises(ValueError, match="input_gram: expected a 2-d"):
        lowrank_fit(W, 2, input_gram=np.ones(6))
    bad = C.copy()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match="input_gram: not symmetric"):
        lowrank_fit(W, 2, input_gram=bad)
    bad = C.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="input_gram: contains NaN"):
        lowrank_sparse_fit(W, 2, 0.1, input_gram=bad)
    with pytest.raises(ValueError, match="input_gram: negative diagonal"):
        lowrank_fit(W, 2, input_gram=C - np.diag(np.full(6, 1e9)))
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    indefinite = (Q * np.array([5.0, 4, 3, 2, 1, -3])) @ Q.T
    indefinite[np.diag_indices(6)] = np.abs(np.diagonal(indefinite))
    if np.linalg.eigvalsh(indefinite)[0] < -1e-3:
        with pytest.raises(ValueError, match="input_gram: not positive semidefinite"):
            lowrank_fit(W, 2, input_gram=indefinite)
    with pytest.raises(ValueError, match=r"input_scale: expected shape \(6,\)"):
        lowrank_fit(W, 2, input_scale=np.ones(5))
    with pytest.raises(ValueError, match="input_scale: second moments must be >= 0"):
        lowrank_fit(W, 2, input_scale=-np.ones(6))
    with pytest.raises(ValueError, match="give one of them"):
        lowrank_fit(W, 2, input_gram=C, input_scale=np.ones(6))
    with pytest.raises(ValueError, match=r"rank: expected an integer in \[1, 6\]"):
        lowrank_fit(W, 7, input_gram=C)
    with pytest.raises(ValueError, match="rank"):
        lowrank_sparse_fit(W, 0, 0.1)
    with pytest.raises(TypeError, match="rank"):
        lowrank_fit(W, 2.0)
    for density in (-0.1, 1.5):
        with pytest.raises(ValueError, match="density"):
            lowrank_sparse_fit(W, 2, density, input_gram=C)
        with pytest.raises(ValueError, match="density"):
            doped_kp_fit_calibrated(W, (2, 2), (4, 3), density, input_gram=C)
    with pytest.raises(ValueError, match="ridge"):
        lowrank_fit(W, 2, input_gram=C, ridge=-1.0)
    with pytest.raises(ValueError, match="a_shape"):
        doped_kp_fit_calibrated(W, (2, 3), (4, 3), 0.1, input_gram=C)
    with pytest.raises(ValueError, match=r"input_gram: expected shape \(6, 6\)"):
        doped_kp_fit_calibrated(W, (2, 2), (4, 3), 0.1, input_gram=np.eye(4))
    with pytest.raises(ValueError, match="W_hat: expected W's shape"):
        calibration_error(W, W[:, :5])
    with pytest.raises(ValueError, match="W: contains NaN"):
        lowrank_fit(np.full((3, 3), np.nan), 1)
    with pytest.raises(ValueError, match="U, V: inner sizes differ"):
        LowRankSparse(np.ones((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="S: expected shape"):
        LowRankSparse(np.ones((3, 2)), np.ones((2, 4)), sp.csr_array((4, 4)))
    with pytest.raises(TypeError, match="x: dtype"):
        LowRankSparse(np.ones((3, 2)), np.ones((2, 4)))(np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="d: missing key"):
        LowRankSparse.from_dict({"U": np.ones((3, 2))})
    with pytest.raises(TypeError, match=r"^d: expected the dict LowRankSparse\.to_dict\(\) returns"):
        LowRankSparse.from_dict(None)
    state = LowRankSparse(np.ones((3, 2)), np.ones((2, 4)), sp.eye(3, 4, format="csr")).to_dict()
    del state["S_indptr"]
    with pytest.raises(ValueError, match=r"^d: has 'S_indices', 'S_data' but not 'S_indptr'"):
        LowRankSparse.from_dict(state)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_lowrank_sparse_refuses_nonfinite_x(dtype, bad):
    # Returned NaN silently; DopedKronecker refuses it, and so does this operator now.
    op = LowRankSparse(np.ones((4, 3), dtype), np.ones((3, 5), dtype))
    x = np.ones((2, 5), dtype)
    x[1, 3] = bad
    with pytest.raises(ValueError, match=r"^x: contains NaN or Inf"):
        op(x)
    off = LowRankSparse(np.ones((4, 3), dtype), np.ones((3, 5), dtype), check_finite=False)
    with np.errstate(invalid="ignore"):
        assert not np.isfinite(off(x)[1]).any()  # the opt-out computes as before
    assert "lowrank_fit" in lpfast.__all__
