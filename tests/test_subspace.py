"""lpfast.lp_subspace: against the NumPy IRLS reference, properties, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lpfast
import lpfast.reference as ref

from shared import DTYPES

#: (relative cost, projector Frobenius distance) tolerances against the reference.
TOL = {np.float32: (2e-4, 2e-2), np.float64: (1e-9, 1e-6)}


def planted(n=400, d=24, k=3, outliers=0.08, noise=0.05, scale=10.0, seed=0, dtype=np.float64):
    """Rows near a random k-dim subspace, plus a fraction of far-away outlier rows.

    Returns X and the planted basis (d, k).
    """
    rng = np.random.default_rng(seed)
    B, _ = np.linalg.qr(rng.standard_normal((d, k)))
    X = rng.standard_normal((n, k)) @ B.T + noise * rng.standard_normal((n, d))
    m = int(round(outliers * n))
    X[:m] = scale * rng.standard_normal((m, d))
    return X.astype(dtype), B


def projector_distance(A, B):
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    return float(np.linalg.norm(A @ A.T - B @ B.T))


def max_principal_angle(A, B):
    A, B = np.linalg.qr(np.asarray(A, np.float64))[0], np.linalg.qr(np.asarray(B, np.float64))[0]
    s = np.linalg.svd(A.T @ B, compute_uv=False)
    return float(np.arccos(np.clip(s.min(), -1, 1)))


# -- against the reference ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(dtype, p, weighted):
    X, _ = planted(n=300, d=16, k=3, seed=int(p * 10) + weighted, dtype=dtype)
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(X)) if weighted else None
    res = lpfast.lp_subspace(X, 3, p, weights=w, max_iter=30, tol=1e-7)
    V, hist, n_iter, conv = ref.lp_subspace(X, 3, p, weights=w, max_iter=30, tol=1e-7, eps=res.eps)
    rtol, ptol = TOL[dtype]
    assert res.basis.dtype == dtype and res.basis.shape == (16, 3)
    assert abs(res.cost - hist[-1]) <= rtol * hist[-1]
    assert projector_distance(res.basis, V) <= ptol
    if dtype == np.float64:
        assert (res.n_iter, res.converged) == (n_iter, conv)
        np.testing.assert_allclose(res.history, hist, rtol=1e-9)
    assert res.cost == pytest.approx(ref.subspace_cost(X, res.basis, p, w), rel=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_random_gaussian(dtype):
    """Unstructured data: few steps, so the paths cannot drift apart along flat directions."""
    X = np.random.default_rng(5).standard_normal((200, 12)).astype(dtype)
    res = lpfast.lp_subspace(X, 4, 1.0, max_iter=5, tol=0.0)
    V, hist, n_iter, _ = ref.lp_subspace(X, 4, 1.0, max_iter=5, tol=0.0, eps=res.eps)
    rtol, ptol = TOL[dtype]
    assert res.n_iter == n_iter == 5
    np.testing.assert_allclose(res.history, hist, rtol=rtol)
    assert projector_distance(res.basis, V) <= ptol


def test_default_eps_matches_reference():
    X, _ = planted()
    w = np.linspace(0.1, 1, len(X))
    assert lpfast.lp_subspace(X, 2, weights=w, max_iter=1).eps == pytest.approx(
        ref.lp_subspace_eps(X, w), rel=1e-12)
    assert lpfast.lp_subspace(np.zeros((5, 3)), 1, max_iter=1).eps == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_subspace_cost_matches_reference(dtype):
    X, B = planted(n=700, dtype=dtype)  # more rows than one 256-row block of the kernel
    w = np.random.default_rng(8).uniform(0.0, 2.0, len(X))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    Bx = B.astype(dtype)  # the basis in X's dtype: mixing float32 and float64 is refused
    for p in (0.5, 1.0, 1.5, 2.0, 3.0):
        X64 = X.astype(np.float64)
        assert lpfast.subspace_cost(X, Bx, p) == pytest.approx(ref.subspace_cost(X64, B, p), rel=rtol)
        assert lpfast.subspace_cost(X, Bx, p, weights=w) == pytest.approx(
            ref.subspace_cost(X64, B, p, w.astype(dtype)), rel=rtol)


def test_distances_accurate_near_subspace():
    """Rows almost on the subspace: the distances must not suffer from cancellation."""
    rng = np.random.default_rng(3)
    B, _ = np.linalg.qr(rng.standard_normal((30, 4)))
    off = np.linalg.qr(np.hstack([B, rng.standard_normal((30, 1))]))[0][:, 4]
    for dtype, tiny in ((np.float64, 1e-9), (np.float32, 1e-2)):
        X = (rng.standard_normal((50, 4)) @ B.T * 100 + tiny * off).astype(dtype)
        d = lpfast._core.subspace_distances(X, B.astype(dtype))
        exact = ref.subspace_distances(X.astype(np.float64), B)
        np.testing.assert_allclose(d, exact, rtol=0.01 if dtype == np.float32 else 1e-4)


# -- properties -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1.0, 1.2, 1.5, 1.8, 2.0])
def test_history_non_increasing(dtype, p):
    X, _ = planted(n=500, d=20, k=4, seed=7, dtype=dtype)
    res = lpfast.lp_subspace(X, 4, p, max_iter=50, tol=0.0)
    h = res.history
    slack = 1e-6 if dtype == np.float32 else 1e-12
    assert np.all(h[1:] <= h[:-1] * (1 + slack)), np.diff(h)
    assert res.cost == h[-1] and len(h) == res.n_iter + 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_p2_equals_svd(dtype, weighted):
    """p = 2 from the SVD start returns that start, the optimum: no step, one cost."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 15)).astype(dtype)
    X[:, :3] *= 5
    w = rng.uniform(0.2, 3.0, len(X)) if weighted else None
    seen = []
    res = lpfast.lp_subspace(X, 3, 2.0, weights=w, callback=lambda i, c: seen.append((i, c)))
    V, hist, n_iter, conv = ref.lp_subspace(X, 3, 2.0, weights=w)
    sw = np.ones(len(X)) if w is None else np.sqrt(w)
    _, _, Vt = np.linalg.svd(sw[:, None] * X.astype(np.float64), full_matrices=False)
    rtol, _ = TOL[dtype]
    close = 1e-4 if dtype == np.float32 else 1e-10
    assert (res.n_iter, res.converged, len(res.history)) == (n_iter, conv, len(hist)) == (0, True, 1)
    assert projector_distance(res.basis, Vt[:3].T) <= close
    np.testing.assert_allclose(res.basis, V, atol=close)  # same signs as the reference too
    assert res.cost == res.history[0] == pytest.approx(hist[0], rel=rtol)
    assert res.cost == pytest.approx(ref.subspace_cost(X, res.basis, 2.0, w), rel=rtol)
    assert seen == [(0, res.cost)]
    np.testing.assert_allclose(res.basis.T @ res.basis, np.eye(3), atol=1e-5 if dtype == np.float32 else 1e-12)
    # Only the SVD start is the optimum: from another start IRLS steps to it.
    other = lpfast.lp_subspace(X, 3, 2.0, weights=w, init=np.eye(15, dtype=dtype)[:, 5:8])
    assert other.n_iter >= 1 and other.converged
    assert projector_distance(other.basis, res.basis) <= close
    # A coreset cannot improve on the exact optimum and is not used.
    core = lpfast.lp_subspace(X, 3, 2.0, weights=w, coreset=50, seed=0)
    np.testing.assert_array_equal(core.basis, res.basis)
    assert core.coreset_history is None and core.cost == res.cost


@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_robust_to_outliers(dtype):
    X, B = planted(n=1000, d=30, k=3, outliers=0.08, noise=0.01, scale=20.0, seed=11, dtype=dtype)
    # outlier rows are ~60x farther from the origin than inlier rows
    l1 = lpfast.lp_subspace(X, 3, 1.0)
    svd = lpfast.lp_subspace(X, 3, 2.0)
    assert max_principal_angle(l1.basis, B) < 0.1
    assert max_principal_angle(svd.basis, B) > 0.5


def test_zero_residuals_do_not_divide_by_zero():
    rng = np.random.default_rng(4)
    B, _ = np.linalg.qr(rng.standard_normal((10, 2)))
    X = rng.standard_normal((60, 2)) @ B.T  # exactly rank 2
    X[:5] = 0.0
    res = lpfast.lp_subspace(X, 2, 1.0)
    assert np.isfinite(res.basis).all() and res.cost <= 1e-10 * np.abs(X).sum()
    res3 = lpfast.lp_subspace(X, 3, 1.0)  # k > rank: cost 0 from the start
    assert res3.converged and res3.cost < 1e-10
    zero = lpfast.lp_subspace(np.zeros((4, 3)), 1, 1.0)
    assert zero.cost == 0 and np.isfinite(zero.basis).all()


def test_k_equals_d_is_whole_space():
    X = np.random.default_rng(0).standard_normal((20, 5))
    res = lpfast.lp_subspace(X, 5, 1.0)
    np.testing.assert_allclose(res.basis @ res.basis.T, np.eye(5), atol=1e-12)
    assert res.cost < 1e-10 and res.converged


def test_p_above_2_safeguard_keeps_improving_steps():
    X, _ = planted(n=300, d=12, k=2, seed=9)
    for p in (3.0, 4.0, 8.0):
        res = lpfast.lp_subspace(X, 2, p, max_iter=40)
        assert np.all(np.diff(res.history) <= 0)
        svd_cost = lpfast.subspace_cost(X, lpfast.lp_subspace(X, 2, 2.0).basis, p)
        assert res.cost <= svd_cost * (1 + 1e-12)


def test_weights_equal_repeated_rows():
    X, _ = planted(n=120, d=10, k=2, seed=2)
    reps = np.random.default_rng(0).integers(1, 4, len(X))
    a = lpfast.lp_subspace(X, 2, 1.0, weights=reps.astype(float), tol=1e-10, eps=1e-9)
    b = lpfast.lp_subspace(np.repeat(X, reps, axis=0), 2, 1.0, tol=1e-10, eps=1e-9)
    assert a.cost == pytest.approx(b.cost, rel=1e-8)
    assert projector_distance(a.basis, b.basis) < 1e-4  # IRLS creeps along flat directions


def test_factorize():
    X, _ = planted(n=100, d=12, k=3, dtype=np.float32)
    res = lpfast.lp_subspace(X, 3, 1.0)
    U, Vt = res.factorize()
    assert U.shape == (100, 3) and Vt.shape == (3, 12) and U.dtype == Vt.dtype == np.float32
    np.testing.assert_allclose(U, X @ res.basis, rtol=1e-5, atol=1e-5)
    E = np.random.default_rng(0).standard_normal((7, 12))
    U2, _ = res.factorize(E)
    np.testing.assert_allclose(U2, E.astype(np.float32) @ res.basis, rtol=1e-5)
    with pytest.raises(ValueError, match="E"):
        res.factorize(np.ones((3, 11)))


def test_layouts_dtypes_and_input_untouched():
    X, _ = planted(n=150, d=10, k=2, dtype=np.float64)
    base = lpfast.lp_subspace(X, 2, 1.0)
    F = np.asfortranarray(X)
    strided = np.repeat(X, 2, axis=1)[:, ::2]
    for Y in (F, strided):
        before = Y.copy()
        r = lpfast.lp_subspace(Y, 2, 1.0)
        np.testing.assert_array_equal(Y, before)
        np.testing.assert_array_equal(r.basis, base.basis)
    Xi = np.round(X * 10).astype(np.int64)
    assert lpfast.lp_subspace(Xi, 2, 1.0).basis.dtype == np.float64
    assert lpfast.lp_subspace(X.astype(np.float32), 2, 1.0).basis.dtype == np.float32


def test_init_array_and_determinism():
    X, B = planted(n=200, d=10, k=2)
    r1 = lpfast.lp_subspace(X, 2, 1.0, init=B * 3.0)
    r2 = lpfast.lp_subspace(X, 2, 1.0, init=B * 3.0)
    np.testing.assert_array_equal(r1.basis, r2.basis)
    assert max_principal_angle(r1.basis, B) < 0.1


def test_callback_verbose_and_early_stop(capsys):
    X, _ = planted(n=200, d=10, k=2)
    seen = []
    res = lpfast.lp_subspace(X, 2, 1.0, tol=0.0, max_iter=20,
                             callback=lambda i, c: seen.append((i, c)), verbose=True)
    assert [i for i, _ in seen] == list(range(res.n_iter + 1))
    np.testing.assert_array_equal([c for _, c in seen], res.history)
    assert "iter" in capsys.readouterr().err
    stopped = lpfast.lp_subspace(X, 2, 1.0, tol=0.0, max_iter=20, callback=lambda i, c: i >= 3)
    assert stopped.n_iter == 3 and not stopped.converged

    def boom(i, c):
        raise KeyError("from callback")

    with pytest.raises(KeyError, match="from callback"):
        lpfast.lp_subspace(X, 2, 1.0, callback=boom)


def test_threads_agree_and_concurrent_calls():
    X, _ = planted(n=3000, d=40, k=4, seed=3)
    old = lpfast.get_num_threads()
    try:
        lpfast.set_num_threads(1)
        one = lpfast.lp_subspace(X, 4, 1.0, max_iter=10)
        lpfast.set_num_threads(2)
        two = lpfast.lp_subspace(X, 4, 1.0, max_iter=10)
        assert two.cost == pytest.approx(one.cost, rel=1e-9)
        assert projector_distance(one.basis, two.basis) < 1e-6
        out = [None] * 4
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(
            i, lpfast.lp_subspace(X, 4, 1.0, max_iter=10))) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in out:
            np.testing.assert_array_equal(r.basis, two.basis)
    finally:
        lpfast.set_num_threads(old)


# -- coreset --------------------------------------------------------------------------------

def _lewis_available():
    try:
        from lpfast.lewis import lewis_sample  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _lewis_available(), reason="lpfast.lewis not built yet")
@pytest.mark.parametrize("dtype", DTYPES)
def test_coreset_close_to_full_fit(dtype):
    X, _ = planted(n=20000, d=32, k=4, outliers=0.05, noise=0.1, seed=21, dtype=dtype)
    full = lpfast.lp_subspace(X, 4, 1.0)
    cs = lpfast.lp_subspace(X, 4, 1.0, coreset=1000, seed=0)
    assert cs.cost <= full.cost * 1.03
    assert cs.coreset_history is not None
    again = lpfast.lp_subspace(X, 4, 1.0, coreset=1000, seed=0)
    np.testing.assert_array_equal(cs.basis, again.basis)


@pytest.mark.skipif(not _lewis_available(), reason="lpfast.lewis not built yet")
def test_coreset_sample_only_fit_is_close():
    """The sample fit alone (max_iter=1 refinement) already lands near the full cost."""
    X, _ = planted(n=20000, d=32, k=4, outliers=0.05, noise=0.1, seed=22)
    full = lpfast.lp_subspace(X, 4, 1.0)
    cs = lpfast.lp_subspace(X, 4, 1.0, coreset=2000, seed=1, max_iter=1)
    assert cs.history[0] <= full.cost * 1.05


# -- bad input ------------------------------------------------------------------------------

X_OK = np.random.default_rng(0).standard_normal((20, 5))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(k=0), ValueError, "k"),
    (dict(k=6), ValueError, "k"),
    (dict(k=2.0), TypeError, "k"),
    (dict(p=0.5), ValueError, "p"),
    (dict(p=float("nan")), ValueError, "p"),
    (dict(p="1"), TypeError, "p"),
    (dict(weights=-np.ones(20)), ValueError, "weights"),
    (dict(weights=np.ones(19)), ValueError, "weights"),
    (dict(weights=np.full(20, np.nan)), ValueError, "weights"),
    (dict(weights=np.zeros(20)), ValueError, "weights"),
    (dict(weights=np.ones((20, 1))), ValueError, "weights"),
    (dict(init="pca"), ValueError, "init"),
    (dict(init=np.ones((5, 2))), ValueError, "init"),
    (dict(init=np.ones((4, 2))), ValueError, "init"),
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(coreset=1), ValueError, "coreset"),
    (dict(callback=3), TypeError, "callback"),
])
def test_bad_arguments(kwargs, exc, match):
    args = dict(k=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        lpfast.lp_subspace(X_OK, **args)


@pytest.mark.parametrize("X, exc", [
    (np.zeros((0, 5)), ValueError),
    (np.zeros((5, 0)), ValueError),
    (np.zeros(5), ValueError),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), ValueError),
    (np.array([["a", "b"]]), TypeError),
    (np.ones((3, 2), dtype=complex), TypeError),
])
def test_bad_X(X, exc):
    with pytest.raises(exc, match="X"):
        lpfast.lp_subspace(X, 1)


def test_k_larger_than_n():
    with pytest.raises(ValueError, match="k"):
        lpfast.lp_subspace(np.ones((3, 8)), 4)


def test_mixed_float_dtypes_refused_weights_converted():
    X32 = X_OK.astype(np.float32)
    V = np.linalg.qr(np.random.default_rng(1).standard_normal((5, 2)))[0]
    with pytest.raises(TypeError, match=r"^mismatched dtypes: X is float32 but basis is float64"):
        lpfast.subspace_cost(X32, V)
    with pytest.raises(TypeError, match=r"^mismatched dtypes: X is float32 but init is float64"):
        lpfast.lp_subspace(X32, 2, init=V)
    assert lpfast.subspace_cost(X32, V.astype(np.float32)) > 0
    assert lpfast.lp_subspace(X32, 2, init=V.astype(np.float32)).basis.dtype == np.float32
    # Per-row weights are a vector of n: converted to X's dtype, as the README says.
    w = np.linspace(1.0, 2.0, 20)
    a = lpfast.lp_subspace(X32, 2, weights=w)
    b = lpfast.lp_subspace(X32, 2, weights=w.astype(np.float32))
    assert a.basis.dtype == np.float32
    np.testing.assert_array_equal(a.basis, b.basis)
    assert lpfast.subspace_cost(X32, a.basis, weights=w) == lpfast.subspace_cost(
        X32, a.basis, weights=w.astype(np.float32))


# -- scale: float32 at 1e-30 or 1e19 (issue 18) ---------------------------------------------------

def cosines(a, b):
    """Cosines of the principal angles between span(a) and span(b)."""
    return np.linalg.svd(a.T.astype(np.float64) @ b.astype(np.float64), compute_uv=False)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e19, 1e30, 3e37])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_float32_at_extreme_scales(scale, p):
    # At 1e-30 the float32 Grams underflowed (cosines 0.42 and 0.03 against the unscaled
    # fit); from 1e19 they overflowed into "symmetric eigensolver did not converge".
    X = np.random.default_rng(0).standard_normal((30, 6))
    a = lpfast.lp_subspace((X * scale).astype(np.float32), 2, p=p)
    b = lpfast.lp_subspace(X.astype(np.float32), 2, p=p)
    np.testing.assert_allclose(cosines(a.basis, b.basis), 1.0, atol=1e-4)
    assert a.cost / scale**p == pytest.approx(b.cost, rel=1e-4)
    assert a.eps / scale == pytest.approx(b.eps, rel=1e-4)
    cost = lpfast.subspace_cost((X * scale).astype(np.float32), b.basis, p)
    assert cost / scale**p == pytest.approx(b.cost, rel=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("e", [-400, -100, 100, 400])
def test_power_of_two_scales(dtype, e):
    # Scaled by 2**e the data are the same numbers to the bit: the bases agree to rounding
    # and the costs (history, callback) are 2**(e p) times the unscaled ones.
    if dtype == np.float32 and abs(e) > 120:
        return
    tol = 1e-5 if dtype == np.float32 else 1e-12
    X = np.random.default_rng(1).standard_normal((40, 5)).astype(dtype)
    Xs = np.ldexp(X, e)
    for p in (1.0, 1.5, 2.0):
        seen = []
        a = lpfast.lp_subspace(Xs, 2, p=p, callback=lambda i, c: seen.append(c))
        b = lpfast.lp_subspace(X, 2, p=p)
        np.testing.assert_allclose(a.basis, b.basis, atol=tol)
        np.testing.assert_allclose(a.history[-1], b.history[-1] * 2.0 ** (e * p), rtol=tol)
        np.testing.assert_allclose(seen, a.history, rtol=1e-15)  # the callback's units too
        assert a.eps == np.ldexp(b.eps, e)
        U, _ = a.factorize()
        np.testing.assert_array_equal(U, Xs @ a.basis)  # factorize uses the caller's X


def test_p_beyond_the_supported_range_is_a_value_error():
    X = np.random.default_rng(0).standard_normal((30, 6))
    for dtype in DTYPES:
        with pytest.raises(ValueError, match=r"^p: expected a value in \[1.0, 100.0\], got 1000"):
            lpfast.lp_subspace(X.astype(dtype), 2, p=1000)
        assert np.isfinite(lpfast.lp_subspace(X.astype(dtype), 2, p=100).cost)
    with pytest.raises(ValueError, match=r"^p: expected a value in \[0.0, 100.0\]"):
        lpfast.subspace_cost(X, np.eye(6)[:, :2], p=101)
