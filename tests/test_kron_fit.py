"""Fitting doped Kronecker products: nearest_kronecker, doped_kp_fit and the factor-shape
search, against lpfast.reference and their own guarantees."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lpfast
from lpfast import doped_kp_fit, nearest_kronecker
from lpfast import reference as ref

from shared import DTYPES
from kron_cases import (baseline_error, random_x, relative_error)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


# -- nearest_kronecker -----------------------------------------------------------------------

def planted_W(a_shape, b_shape, dtype, weights=(10.0, 4.0, 1.5), noise=0.01, seed=5):
    """A sum of Kronecker products with well-separated weights plus a little noise."""
    rng = np.random.default_rng(seed)
    W = sum(w * np.kron(rng.standard_normal(a_shape), rng.standard_normal(b_shape)) for w in weights)
    W = W + noise * rng.standard_normal(W.shape)
    return W.astype(dtype)


def assert_same_kron_sum(op, W, a_shape, b_shape, rank, rtol):
    """op's dense sum equals the reference's (factors themselves may differ in sign)."""
    A, B = ref.nearest_kronecker(np.asarray(W, np.float64), a_shape, b_shape, rank)
    want = ref.kron_dense(A, B)
    got = op.to_dense()
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max())


NK_CASES = [
    pytest.param((2, 3), (3, 2), id="6x6"),
    pytest.param((4, 3), (2, 5), id="8x15"),
    pytest.param((8, 6), (5, 10), id="40x60"),
    pytest.param((1, 7), (6, 1), id="6x7-degenerate"),
]


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize(("a_shape", "b_shape"), NK_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_kronecker_matches_reference(dtype, a_shape, b_shape, rank):
    rank = min(rank, a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])
    W = planted_W(a_shape, b_shape, dtype)
    op = nearest_kronecker(W, a_shape, b_shape, rank=rank)
    assert op.dtype == np.dtype(dtype)
    assert op.A.shape == (rank, *a_shape) and op.B.shape == (rank, *b_shape)
    assert op.nnz == 0 and op.bias is None
    assert_same_kron_sum(op, W, a_shape, b_shape, rank, 1e-4 if dtype == np.float32 else 1e-10)
    for a in op.A:  # documented sign convention: each A[r]'s largest-|.| entry is positive
        assert a.flat[np.argmax(np.abs(a))] > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_kronecker_of_random_W(dtype):
    W = random_x((12, 20), np.float64)
    op = nearest_kronecker(W.astype(dtype), (3, 4), (4, 5), rank=2)
    assert_same_kron_sum(op, W, (3, 4), (4, 5), 2, 1e-3 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_kronecker_recovers_exact_product(dtype, rank):
    rng = np.random.default_rng(8)
    A = rng.standard_normal((rank, 4, 3))
    B = rng.standard_normal((rank, 5, 6))
    W = ref.kron_dense(A, B).astype(dtype)
    op = nearest_kronecker(W, (4, 3), (5, 6), rank=rank)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert relative_error(W, op.to_dense()) < tol


@pytest.mark.parametrize("rank", [1, 2])
def test_nearest_kronecker_svds_path(rank):
    """R(W) is 400 x 400 > 256: the truncated (svds) branch."""
    W = planted_W((20, 20), (20, 20), np.float64, noise=0.1)
    op = nearest_kronecker(W, (20, 20), (20, 20), rank=rank)
    assert_same_kron_sum(op, W, (20, 20), (20, 20), rank, 1e-9)
    for a in op.A:
        assert a.flat[np.argmax(np.abs(a))] > 0


# -- doped_kp_fit ----------------------------------------------------------------------------

def heavy_tailed_W(shape, dtype, seed=11):
    return np.random.default_rng(seed).standard_t(2, size=shape).astype(dtype)


FIT_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


@pytest.mark.parametrize("make_W", [random_x, heavy_tailed_W], ids=["gaussian", "heavy_tailed"])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_never_worse_than_baseline(dtype, rank, density, make_W):
    a_shape, b_shape = (4, 5), (6, 3)
    W = make_W((24, 15), dtype)
    op = doped_kp_fit(W, a_shape, b_shape, density=density, rank=rank)
    nnz = int(round(density * W.size))
    assert op.nnz == nnz
    assert op.rank == rank and op.dtype == np.dtype(dtype)
    err = relative_error(W, op.to_dense())
    base = baseline_error(W, a_shape, b_shape, rank, nnz)
    tol = FIT_TOL[np.dtype(dtype)]
    assert err <= base + tol
    history = op.fit_info["relative_error"]
    assert op.fit_info["n_iter"] == len(history) - 1
    assert history[0] == pytest.approx(base, abs=tol)
    # Alternating exact minimizations: the error never rises, and the best iterate is kept.
    assert all(b <= a + tol for a, b in zip(history, history[1:]))
    assert err == pytest.approx(min(history), abs=tol)


def test_fit_svds_path_never_worse_than_baseline():
    """R(W) is 400 x 400: every round uses the truncated SVD."""
    W = planted_W((20, 20), (20, 20), np.float64, noise=0.1)
    W[np.random.default_rng(2).random(W.shape) < 0.005] += 30
    op = doped_kp_fit(W, (20, 20), (20, 20), density=0.005, rank=2, n_iter=5)
    base = baseline_error(W, (20, 20), (20, 20), 2, op.nnz)
    assert op.nnz == round(0.005 * W.size)
    assert op.fit_info["relative_error"][0] == pytest.approx(base, abs=1e-9)
    assert relative_error(W, op.to_dense()) <= base + 1e-9


@pytest.mark.parametrize("density", [0.0, 0.001, 0.0137, 0.1, 0.33, 0.999, 1.0])
def test_fit_nnz_is_rounded_density(density):
    W = random_x((12, 20), np.float64)
    op = doped_kp_fit(W, (3, 4), (4, 5), density=density, n_iter=2)
    assert op.nnz == int(round(density * W.size))
    assert (op.S is None) == (op.nnz == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_density_zero_is_nearest_kronecker(dtype):
    W = random_x((12, 20), dtype)
    op = doped_kp_fit(W, (3, 4), (4, 5), density=0, rank=2)
    assert op.S is None and op.nnz == 0
    np.testing.assert_allclose(op.to_dense(), nearest_kronecker(W, (3, 4), (4, 5), 2).to_dense(),
                               rtol=0, atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_density_one_reproduces_W(dtype):
    W = random_x((12, 20), dtype)
    op = doped_kp_fit(W, (3, 4), (4, 5), density=1.0)
    assert op.nnz == W.size
    # KP + (W - KP) is W up to a couple of roundings per entry.
    np.testing.assert_allclose(op.to_dense(), W, rtol=0, atol=16 * np.finfo(dtype).eps * np.abs(W).max())


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_recovers_planted_doping(dtype, rank):
    rng = np.random.default_rng(21)
    a_shape, b_shape = (6, 5), (7, 4)
    W = ref.kron_dense(rng.standard_normal((rank, *a_shape)), rng.standard_normal((rank, *b_shape)))
    spikes = rng.random(W.shape) < 0.03
    W[spikes] += 10 * rng.standard_normal(spikes.sum())
    W = W.astype(dtype)
    op = doped_kp_fit(W, a_shape, b_shape, density=spikes.mean(), rank=rank, n_iter=200, tol=0)
    assert relative_error(W, op.to_dense()) < (1e-4 if dtype == np.float32 else 1e-9)
    assert op.fit_info["relative_error"][0] > 0.05  # the baseline alone is far off


def test_fit_does_not_modify_W():
    W = random_x((12, 20), np.float64)
    before = W.copy()
    nearest_kronecker(W, (3, 4), (4, 5), rank=2)
    doped_kp_fit(W, (3, 4), (4, 5), density=0.1, rank=2)
    assert np.array_equal(W, before)


# -- factor shapes chosen by the fit -----------------------------------------------------------

def brute_force_shapes(m, n):
    """Every factorization of (m, n), ranked as documented, written out independently."""
    pairs = [((m1, n1), (m // m1, n // n1)) for m1 in range(1, m + 1) if m % m1 == 0
             for n1 in range(1, n + 1) if n % n1 == 0]

    def key(pair):
        (m1, n1), (m2, n2) = pair
        return (m1 * n1 == 1 or m2 * n2 == 1, m1 * n1 + m2 * n2, abs(m1 - n1) + abs(m2 - n2),
                pair)

    return sorted(pairs, key=key)


@pytest.mark.parametrize("m, n", [(1, 1), (1, 7), (12, 18), (64, 96), (13, 17), (384, 1536)])
def test_kron_factor_shapes_ranks_every_factorization(m, n):
    want = brute_force_shapes(m, n)
    assert lpfast.kron_factor_shapes(m, n, limit=len(want) + 3) == want
    got = lpfast.kron_factor_shapes(m, n)
    assert got == want[:4]
    for (m1, n1), (m2, n2) in got:
        assert (m1 * m2, n1 * n2) == (m, n)
    if len(want) > 2:  # a 1 x 1 factor only when nothing else exists
        assert all(a[0] * a[1] > 1 and b[0] * b[1] > 1 for a, b in got[:1])


def test_kron_factor_shapes_large_prime_sides():
    # The divisor search is O(sqrt(side)): a 1e9 prime side took 98 s with a linear one.
    q = 1_000_000_007
    assert lpfast.kron_factor_shapes(q, q, limit=10) == [
        ((1, q), (q, 1)), ((q, 1), (1, q)), ((1, 1), (q, q)), ((q, q), (1, 1))]
    side = 2**31 - 1  # the largest side accepted, a prime
    assert lpfast.kron_factor_shapes(side, 6)[0] == ((1, 6), (side, 1))


@pytest.mark.parametrize("m, n", [(2**61 - 1, 2**61 - 1), (4, 2**31), (2**31, 4)])
def test_kron_factor_shapes_refuses_sides_no_layer_has(m, n):
    # Once a search that never ended; a side above 2**31 - 1 is a clear error now.
    name = "m" if m > 2**31 - 1 else "n"
    with pytest.raises(ValueError, match=rf"^{name}: "):
        lpfast.kron_factor_shapes(m, n)


def test_kron_factor_shapes_bad_input():
    with pytest.raises(ValueError, match="m"):
        lpfast.kron_factor_shapes(0, 4)
    with pytest.raises(TypeError, match="n"):
        lpfast.kron_factor_shapes(4, 2.5)
    with pytest.raises(ValueError, match="limit"):
        lpfast.kron_factor_shapes(4, 4, limit=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_without_shapes_keeps_the_best_candidate(dtype):
    W = planted_W((4, 6), (6, 4), dtype, noise=0.05)
    op = doped_kp_fit(W, density=0.02, rank=2, n_iter=2)
    cands = op.fit_info["candidates"]
    assert [(c["a_shape"], c["b_shape"]) for c in cands] == lpfast.kron_factor_shapes(24, 24)
    best = min(cands, key=lambda c: c["relative_error"])
    assert (op.a_shape, op.b_shape) == (best["a_shape"], best["b_shape"])
    assert (op.fit_info["a_shape"], op.fit_info["b_shape"]) == (op.a_shape, op.b_shape)
    # the same fit as asking for the winning shapes directly, and its error is the dense one
    again = doped_kp_fit(W, op.a_shape, op.b_shape, density=0.02, rank=2, n_iter=2)
    np.testing.assert_array_equal(again.to_dense(), op.to_dense())
    err = relative_error(W.astype(np.float64), op.to_dense().astype(np.float64))
    assert err == pytest.approx(best["relative_error"], rel=1e-4 if dtype == np.float32 else 1e-9)


def test_fit_rank_is_lowered_to_what_each_shape_allows():
    W = np.random.default_rng(0).standard_normal((6, 4))
    op = doped_kp_fit(W, density=0.0, rank=50, n_iter=0)
    a, b = op.a_shape, op.b_shape
    assert op.rank == min(a[0] * a[1], b[0] * b[1])
    with pytest.raises(ValueError, match="rank"):  # given shapes: the rank is checked instead
        doped_kp_fit(W, a, b, density=0.0, rank=50)


@pytest.mark.parametrize("ratio", [2.0, 5.0, 9.5])
def test_fit_at_a_ratio_spends_the_budget(ratio):
    W = np.random.default_rng(1).standard_normal((32, 48))
    m, n = W.shape
    op = doped_kp_fit(W, ratio=ratio, rank=2, n_iter=1)
    for c in op.fit_info["candidates"]:
        if "reason" in c:
            continue
        kp = 2 * (c["a_shape"][0] * c["a_shape"][1] + c["b_shape"][0] * c["b_shape"][1])
        assert c["density"] == math.floor(m * n / ratio - kp) / (m * n)
    assert op.nnz == round(op.fit_info["density"] * m * n)
    assert op.n_params <= m * n / ratio


def test_fit_shape_search_bad_input():
    W = np.ones((6, 4))
    with pytest.raises(ValueError, match="a_shape, b_shape"):
        doped_kp_fit(W, (2, 2), density=0.1)
    with pytest.raises(ValueError, match="density, ratio"):
        doped_kp_fit(W)
    with pytest.raises(ValueError, match="density, ratio"):
        doped_kp_fit(W, density=0.1, ratio=2)
    with pytest.raises(ValueError, match="ratio"):
        doped_kp_fit(W, ratio=1.0)
    with pytest.raises(ValueError, match="ratio"):  # the factors alone exceed the budget
        doped_kp_fit(W, ratio=20.0)
