"""k-subspace projective clustering (lpfast.projective) against lpfast.reference.k_subspaces_lloyd.

Layout: helpers (planted data, ARI) | same Lloyd as the reference from shared init_bases |
planted recovery and seeding quality | k = 1 equals SVD / lp_subspace | result methods |
determinism and threads | bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

import lpfast
from lpfast import reference as ref

from shared import DTYPES


def planted(n, d, k, j, noise, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    Vs = [np.linalg.qr(rng.standard_normal((d, j)))[0] for _ in range(k)]
    lab = rng.integers(0, k, n)
    X = np.einsum("ndj,nj->nd", np.stack(Vs)[lab], rng.standard_normal((n, j)))
    X += noise * rng.standard_normal((n, d))
    return X.astype(dtype), lab


def random_bases(k, d, j, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return np.stack([np.linalg.qr(rng.standard_normal((d, j)))[0] for _ in range(k)]).astype(dtype)


def ari(a, b):
    """Adjusted Rand index of two labelings (numpy only)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    index = comb(table).sum()
    ra, rb = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = ra * rb / comb(len(a))
    return (index - expected) / (0.5 * (ra + rb) - expected)


# -- same Lloyd as the reference -------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [2.0, 1.0, 1.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(dtype, p, weighted):
    X, _ = planted(500, 16, 3, 3, 0.2, seed=1, dtype=dtype)
    B0 = random_bases(3, 16, 3, seed=2, dtype=dtype)
    w = np.random.default_rng(3).uniform(0.5, 2.0, 500) if weighted else None
    r = lpfast.k_subspaces(X, 3, 3, p, weights=w, init_bases=B0, max_iter=8, tol=0.0)
    Vb, lb, cb, nb, hb = ref.k_subspaces_lloyd(X, B0, p=p, weights=w, max_iter=8, tol=0.0,
                                               eps=r.fit_info["eps"])
    rtol = 1e-9 if dtype == np.float64 else 2e-5
    np.testing.assert_array_equal(r.labels, lb)
    assert r.cost == pytest.approx(cb, rel=rtol)
    assert r.n_iter == nb
    np.testing.assert_allclose(r.history, hb, rtol=rtol)
    for c in range(3):  # same subspaces: projectors agree
        P1 = r.bases[c].astype(float) @ r.bases[c].T.astype(float)
        np.testing.assert_allclose(P1, Vb[c] @ Vb[c].T, atol=1e-6 if dtype == np.float64 else 1e-3)


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_matches_reference_small_clusters(p):
    """Clusters of m rows with j < m <= d/2 take the m x m kernel path: same subspaces."""
    X, _ = planted(150, 120, 3, 3, 0.05, seed=14)
    B0 = random_bases(3, 120, 3, seed=15)
    r = lpfast.k_subspaces(X, 3, 3, p, init_bases=B0, max_iter=6, tol=0.0)
    _, lb, cb, _, hb = ref.k_subspaces_lloyd(X, B0, p=p, max_iter=6, tol=0.0, eps=r.fit_info["eps"])
    np.testing.assert_array_equal(r.labels, lb)
    np.testing.assert_allclose(r.history, hb, rtol=1e-8)


def test_matches_reference_with_empty_cluster_reseed():
    X, _ = planted(300, 10, 2, 2, 0.1, seed=4)
    B0 = random_bases(3, 10, 2, seed=5)
    B0[2] = B0[0]  # a duplicate: cluster 2 starts empty (ties go to the lowest index)
    r = lpfast.k_subspaces(X, 3, 2, init_bases=B0, max_iter=6, tol=0.0)
    _, lb, cb, nb, hb = ref.k_subspaces_lloyd(X, B0, max_iter=6, tol=0.0)
    np.testing.assert_array_equal(r.labels, lb)
    np.testing.assert_allclose(r.history, hb, rtol=1e-9)
    assert len(np.unique(r.labels)) == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [2.0, 1.0])
def test_bounded_assignment_matches_full(dtype, p):
    """Late iterations keep most labels by the subspace-movement bounds and compute only the
    own-cluster distance: labels, cost and history stay those of the full assignment (and of
    the reference), including rows nearly equidistant from two subspaces."""
    X, _ = planted(1500, 24, 4, 3, 0.3, seed=21, dtype=dtype)
    B0 = random_bases(4, 24, 3, seed=22, dtype=dtype)
    mid = X[:40] @ B0[0] @ B0[0].T + X[:40] @ B0[1] @ B0[1].T  # on two subspaces at once
    X = np.concatenate([X, mid.astype(dtype)])
    # tol above the rounding of the cost: tol=0 would run on while the cost's last bits
    # still wobble, and the count of those steps is rounding, not algorithm. In float32 the
    # GEMMs' summation order alone moves the cost by ~4e-9 relative near convergence.
    tol = 1e-9 if dtype == np.float64 else 1e-7
    r = lpfast.k_subspaces(X, 4, 3, p, init_bases=B0, max_iter=40, tol=tol)
    _, lb, cb, nb, hb = ref.k_subspaces_lloyd(X, B0, p=p, max_iter=40, tol=tol,
                                              eps=r.fit_info["eps"])
    assert r.n_iter == nb > 20
    rtol = 1e-9 if dtype == np.float64 else 2e-5
    np.testing.assert_array_equal(r.labels, lb)
    np.testing.assert_allclose(r.history, hb, rtol=rtol)
    np.testing.assert_array_equal(r.predict(X), r.labels)  # the full assignment
    d_full = r.distances(X)
    w_cost = np.sum(d_full.astype(np.float64) ** p)
    assert r.cost == pytest.approx(w_cost, rel=1e-9 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_cost_monotone_and_consistent(p):
    X, _ = planted(800, 20, 4, 3, 0.3, seed=6)
    r = lpfast.k_subspaces(X, 4, 3, p, seeding="random", n_init=2, seed=0, tol=0.0, max_iter=30)
    h = r.history
    if p == 2.0:
        assert np.all(np.diff(h) <= 1e-9 * h[0])
    assert r.cost == pytest.approx(min(h))
    d = r.distances(X)
    w_cost = np.sum(d ** p)
    assert r.cost == pytest.approx(w_cost, rel=1e-9)
    assert np.array_equal(r.predict(X), r.labels)


# -- planted recovery and seeding quality -----------------------------------------------------

@pytest.mark.parametrize("seeding", ["coreset", "dp", "random"])
@pytest.mark.parametrize("p", [2.0, 1.0])
def test_planted_recovery(seeding, p):
    X, lab = planted(2000, 30, 4, 4, 0.05, seed=7)
    r = lpfast.k_subspaces(X, 4, 4, p, seeding=seeding, seed=0, coreset_size=400)
    assert ari(r.labels, lab) >= 0.95


def test_seeding_quality_over_20_seeds():
    X, _ = planted(1500, 24, 5, 3, 0.15, seed=8)
    med = {}
    for s in ("coreset", "dp", "random"):
        med[s] = np.median([lpfast.k_subspaces(X, 5, 3, seeding=s, seed=i, n_init=3,
                                               coreset_size=500).cost for i in range(20)])
    assert med["coreset"] <= med["random"] * (1 + 1e-9)
    assert med["dp"] <= med["random"] * (1 + 1e-9)


# -- k = 1 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_k1_p2_is_svd(dtype):
    X = np.random.default_rng(9).standard_normal((400, 12)).astype(dtype) * np.linspace(3, 0.5, 12)
    r = lpfast.k_subspaces(X, 1, 4, seed=0)
    s = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    assert r.cost == pytest.approx(np.sum(s[4:] ** 2), rel=1e-9 if dtype == np.float64 else 1e-5)
    assert np.all(r.labels == 0)


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_k1_equals_lp_subspace(p):
    X, _ = planted(500, 12, 1, 3, 0.3, seed=10)
    X[:10] *= 20  # outliers
    r = lpfast.k_subspaces(X, 1, 3, p, seed=0, tol=1e-10, max_iter=500, irls_steps=1)
    s = lpfast.lp_subspace(X, 3, p, tol=1e-10, max_iter=500)
    assert r.cost == pytest.approx(s.cost, rel=1e-4)


# -- result methods ---------------------------------------------------------------------------

def test_result_methods():
    X, _ = planted(600, 20, 3, 4, 0.1, seed=11, dtype=np.float32)
    r = lpfast.k_subspaces(X, 3, 4, seed=0)
    assert r.bases.shape == (3, 20, 4) and r.bases.dtype == np.float32
    for V in r.bases:
        np.testing.assert_allclose(V.T @ V, np.eye(4), atol=1e-5)
    C = r.coefficients()
    assert C.shape == (600, 4)
    Xh = r.reconstruct()
    for c in range(3):
        idx = r.labels == c
        np.testing.assert_allclose(C[idx], X[idx] @ r.bases[c], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Xh, r.reconstruct(X), rtol=1e-5, atol=1e-5)
    assert np.sum((X - Xh).astype(float) ** 2) == pytest.approx(r.cost, rel=1e-3)
    assert r.predict(X[0]) == r.labels[0]
    assert r.coefficients(X[:5]).shape == (5, 4)
    assert "KSubspaces" in repr(r)


def test_noncontiguous_and_not_modified():
    X, _ = planted(400, 10, 2, 2, 0.1, seed=12)
    Xf = np.asfortranarray(X)
    before = Xf.copy()
    r1 = lpfast.k_subspaces(Xf, 2, 2, seed=3)
    r2 = lpfast.k_subspaces(np.ascontiguousarray(X), 2, 2, seed=3)
    np.testing.assert_array_equal(Xf, before)
    np.testing.assert_array_equal(r1.labels, r2.labels)
    Xs = np.repeat(X, 2, axis=1)[:, ::2]  # strided view
    r3 = lpfast.k_subspaces(Xs, 2, 2, seed=3)
    np.testing.assert_array_equal(r3.labels, r2.labels)


@pytest.mark.parametrize("scale", [1e-24, 1e20])
def test_default_eps_follows_the_scale_of_float32_data(scale):
    # The default IRLS floor sums squares in X's dtype, where these scales underflow or
    # overflow; it must still be sqrt(eps) times the RMS row norm.
    X = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32)
    Xs = (X.astype(np.float64) * scale).astype(np.float32)
    rms = np.sqrt(np.mean(np.einsum("ij,ij->i", Xs, Xs, dtype=np.float64)))
    r = lpfast.k_subspaces(Xs, 2, 2, 1.0, seeding="random", n_init=1, max_iter=0, seed=0)
    assert r.fit_info["eps"] == pytest.approx(np.sqrt(np.finfo(np.float32).eps) * rms, rel=1e-5)


# -- determinism and threads ------------------------------------------------------------------

@pytest.mark.parametrize("seeding", ["coreset", "dp", "random"])
def test_same_seed_same_result_any_threads(seeding):
    X, _ = planted(3000, 24, 3, 3, 0.2, seed=13, dtype=np.float32)
    try:
        lpfast.set_num_threads(1)
        a = lpfast.k_subspaces(X, 3, 3, seeding=seeding, seed=42, n_init=4, coreset_size=600)
        lpfast.set_num_threads(2)
        b = lpfast.k_subspaces(X, 3, 3, seeding=seeding, seed=42, n_init=4, coreset_size=600)
    finally:
        lpfast.set_num_threads(None)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.bases, b.bases)
    assert a.cost == b.cost


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(n_subspaces=0), ValueError, "n_subspaces"),
    (dict(n_subspaces=51), ValueError, "n_subspaces"),
    (dict(dim=5), ValueError, "dim"),
    (dict(dim=0), ValueError, "dim"),
    (dict(n_subspaces=20, dim=3), ValueError, "n_subspaces \\* dim"),
    (dict(p=0.5), ValueError, "p"),
    (dict(seeding="kmeans"), ValueError, "seeding"),
    (dict(seeding=3), TypeError, "seeding"),
    (dict(n_init=0), ValueError, "n_init"),
    (dict(weights=np.ones(3)), ValueError, "weights"),
    (dict(weights=-np.ones(50)), ValueError, "weights"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed="a"), TypeError, "seed"),
    (dict(init_bases=np.ones((2, 5, 3))), ValueError, "init_bases"),
    (dict(coreset_size=1), ValueError, "coreset_size"),
    (dict(dim=2.5), TypeError, "dim"),
])
def test_bad_arguments(kwargs, exc, name):
    X = np.random.default_rng(0).standard_normal((50, 5))
    args = dict(n_subspaces=2, dim=2)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        lpfast.k_subspaces(X, **args)


def test_bad_X():
    X = np.random.default_rng(0).standard_normal((50, 5))
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="X"):
        lpfast.k_subspaces(X, 2, 2)
    with pytest.raises(ValueError, match="X"):
        lpfast.k_subspaces(np.ones(5), 2, 2)
    with pytest.raises(TypeError, match="X"):
        lpfast.k_subspaces(np.ones((5, 3), dtype=complex), 1, 1)
    r = lpfast.k_subspaces(np.random.default_rng(1).standard_normal((30, 4)), 2, 1, seed=0)
    with pytest.raises(ValueError, match="Y"):
        r.predict(np.ones((2, 3)))


def test_rank_deficient_init_bases_refused():
    # lp_subspace refuses such an init; k_subspaces accepted it and fitted from it.
    X = np.random.default_rng(0).standard_normal((50, 5))
    B0 = np.random.default_rng(1).standard_normal((2, 5, 2))
    B0[1, :, 1] = 2 * B0[1, :, 0]
    with pytest.raises(ValueError, match=r"^init_bases\[1\]: columns are linearly dependent"):
        lpfast.k_subspaces(X, 2, 2, init_bases=B0)


def test_mixed_float_dtypes_refused_weights_converted():
    X = np.random.default_rng(0).standard_normal((50, 5))
    B0 = np.random.default_rng(1).standard_normal((2, 5, 2))
    with pytest.raises(TypeError, match=r"^mismatched dtypes: X is float32 but init_bases is float64"):
        lpfast.k_subspaces(X.astype(np.float32), 2, 2, init_bases=B0)
    r = lpfast.k_subspaces(X.astype(np.float32), 2, 2, seed=0, n_init=1)
    with pytest.raises(TypeError, match=r"^mismatched dtypes: bases is float32 but Y is float64"):
        r.predict(X[:3])
    with pytest.raises(TypeError, match=r"^mismatched dtypes"):
        r.coefficients(X[:3])
    np.testing.assert_array_equal(r.predict(X[:3].astype(np.float32)), r.labels[:3])
    np.testing.assert_array_equal(r.predict(np.ones((1, 5), dtype=np.int64)),
                                  r.predict(np.ones((1, 5), dtype=np.float32)))
    # Per-row weights are a vector of n: converted, as the README says.
    w = 1.0 + np.arange(50) % 4 / 4  # exact in float32
    a = lpfast.k_subspaces(X.astype(np.float32), 2, 2, weights=w, seed=0, n_init=1)
    b = lpfast.k_subspaces(X.astype(np.float32), 2, 2, weights=w.astype(np.float32), seed=0,
                           n_init=1)
    assert a.bases.dtype == np.float32
    np.testing.assert_array_equal(a.bases, b.bases)


# -- scale: float32 at 1e30 (issue 18) ------------------------------------------------------------

def test_float32_at_1e30_with_init_bases_is_finite():
    # The audit's reproducer: NaN bases, silently.
    r = np.random.default_rng(77)
    n, d = int(r.integers(6, 40)), int(r.integers(3, 8))
    X = (r.standard_normal((n, d)) * 2.0**100).astype(np.float32)
    B0 = r.standard_normal((2, d, 2)).astype(np.float32)
    k = lpfast.k_subspaces(X, 2, 2, init_bases=B0)
    assert np.isfinite(k.bases).all() and np.isfinite(k.cost)
    ref_fit = lpfast.k_subspaces(np.ldexp(X, -100), 2, 2, init_bases=B0)
    np.testing.assert_array_equal(k.bases, ref_fit.bases)
    np.testing.assert_array_equal(k.labels, ref_fit.labels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("e", [-100, 100])  # float32 at 2**-120 turns subnormal
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_power_of_two_scales(dtype, p, e):
    # Scaled by 2**e the data are the same numbers to the bit: the fits agree to rounding,
    # with costs times 2**(e p) and coefficients and distances times 2**e.
    tol = 1e-4 if dtype == np.float32 else 1e-10
    X = np.random.default_rng(1).standard_normal((60, 5)).astype(dtype)
    B0 = np.random.default_rng(2).standard_normal((2, 5, 2)).astype(dtype)
    Xs = np.ldexp(X, e)
    for kw in (dict(init_bases=B0, max_iter=20), dict(seed=3, n_init=2)):
        a, b = lpfast.k_subspaces(Xs, 2, 2, p, **kw), lpfast.k_subspaces(X, 2, 2, p, **kw)
        assert np.isfinite(a.bases).all()
        np.testing.assert_allclose(a.bases, b.bases, atol=tol)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.cost == pytest.approx(b.cost * 2.0 ** (e * p), rel=tol)
        # p = 1's IRLS stops at its tolerance: near-zero coefficients of the two fits differ
        # by ~1e-10 of a row's norm (1.2e-10 in the ASan build of tests/sanitize.sh)
        np.testing.assert_allclose(a.coefficients(), np.ldexp(b.coefficients(), e), rtol=tol,
                                   atol=10 * tol * 2.0**e)
        # New rows at the data's scale: same labels, distances and coefficients in Y's units.
        np.testing.assert_array_equal(a.predict(Xs[:7]), b.predict(X[:7]))
        np.testing.assert_allclose(a.distances(Xs[:7]), np.ldexp(b.distances(X[:7]), e),
                                   rtol=tol)
        np.testing.assert_allclose(a.coefficients(Xs[:7]), np.ldexp(b.coefficients(X[:7]), e),
                                   rtol=tol, atol=10 * tol * 2.0**e)
    with pytest.raises(ValueError, match=r"^p: expected a value in \[1.0, 100.0\]"):
        lpfast.k_subspaces(X, 2, 2, 1000.0)
