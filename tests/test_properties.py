"""Property tests: every public NumPy kernel against ``lpfast.reference`` and the invariants
of DESIGN.md, on random and adversarial inputs (duplicated rows, zero rows, rank-deficient,
outliers), float32 and float64, at scales from about 1e-30 to 1e30.

Scales: the data are multiplied by powers of two (2**-100 ~ 7.9e-31 ... 2**100 ~ 1.3e30,
exact in binary floating point, so exact rank deficiency and exact duplicates survive the
scaling and the unscaled problem is the same problem) and, for full-rank data, by decimal
powers (1e-30, 1e30) as users write them. Both dtypes hold data at every one of these
scales; their squares do not fit float32 (2**200 > 3.4e38, 2**-200 < 1.4e-45): the kernels
must scale internally. Where a kernel's *result* itself scales with the data (a product
x @ W.T), the scale is chosen so that the result still fits the dtype.

The comparisons are made against the reference run in float64 on exactly the values the
kernel saw (``X.astype(float64)``), so the reference is the ground truth for that input.

hypothesis runs derandomized (the same examples on every run, so CI is deterministic) with
a bounded number of examples: ``HYPOTHESIS_PROFILE=thorough`` runs 10x more.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lpfast
from lpfast import reference as ref

settings.register_profile("lpfast-ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True, database=None)
settings.register_profile("lpfast-thorough", max_examples=120, deadline=None,
                          derandomize=True, suppress_health_check=[HealthCheck.too_slow],
                          print_blob=True, database=None)
_PROFILE = "lpfast-thorough" if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else "lpfast-ci"
_BASE = settings.get_profile(_PROFILE)


def examples(n: int):
    """The profile's settings with ``n`` examples (scaled by the thorough profile)."""
    factor = 10 if _PROFILE == "lpfast-thorough" else 1
    return settings(_BASE, max_examples=n * factor)


DTYPES = (np.float32, np.float64)
DTYPE_IDS = ("f32", "f64")
# Relative accuracy expected of a result that is a few well-conditioned operations away
# from the data (costs, weights, products); looser for iterative fits (below).
RTOL = {np.float32: 2e-4, np.float64: 1e-9}
FIT_RTOL = {np.float32: 2e-3, np.float64: 1e-5}

POW2_SCALES = (2.0**-100, 2.0**-50, 1.0, 2.0**50, 2.0**100)
DEC_SCALES = (1e-30, 1e30)
KINDS = ("gauss", "lowrank_int", "duplicated", "zero_rows", "outliers")


def _matrix(rng: np.random.Generator, kind: str, n: int, d: int, r: int) -> np.ndarray:
    """An (n, d) float64 matrix of the given adversarial kind (unit scale)."""
    if kind == "lowrank_int":  # exactly rank <= r in both dtypes: small integers
        return (rng.integers(-3, 4, (n, r)).astype(float) @ rng.integers(-3, 4, (r, d)).astype(float))
    X = rng.standard_normal((n, d))
    if kind == "duplicated":
        X = X[rng.integers(0, max(1, n // 3), n)]
    elif kind == "zero_rows":
        X[rng.choice(n, size=max(1, n // 3), replace=False)] = 0.0
    elif kind == "outliers":
        X[rng.choice(n, size=max(1, n // 10), replace=False)] *= 100.0
    return X


@st.composite
def datasets(draw, min_n=2, max_n=24, min_d=1, max_d=7, kinds=KINDS, full_rank=False):
    """(X in the drawn dtype, its kind, its scale)."""
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(("gauss",) if full_rank else kinds))
    d = draw(st.integers(min_d, max_d))
    n = draw(st.integers(max(min_n, d if full_rank else min_n), max(max_n, d)))
    r = draw(st.integers(1, max(1, min(n, d))))
    seed = draw(st.integers(0, 2**32 - 1))
    # Decimal scales would round each entry independently: kept for data whose structure
    # (exact rank, duplicates) does not depend on exact values.
    scales = POW2_SCALES + (DEC_SCALES if kind != "lowrank_int" else ())
    scale = draw(st.sampled_from(scales))
    X = (_matrix(np.random.default_rng(seed), kind, n, d, r) * scale).astype(dtype)
    return X, kind, scale


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def orthonormality_error(V: np.ndarray) -> float:
    V = f64(V)
    return float(np.abs(V.T @ V - np.eye(V.shape[1])).max())


def principal_cosines(V1: np.ndarray, V2: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the column spans (orthonormal inputs)."""
    return np.linalg.svd(f64(V1).T @ f64(V2), compute_uv=False)


def zero_subspace_cost(X: np.ndarray, p: float, w=None) -> float:
    """sum_i w_i ||x_i||^p: the cost of any fit is at most this, and the scale of errors."""
    norms = np.linalg.norm(f64(X), axis=1) ** p
    return float(norms.sum() if w is None else f64(w) @ norms)


def rank_of(X: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(f64(X))) if np.any(X) else 0


# -- lp_subspace / subspace_cost ----------------------------------------------------------


@examples(40)
@given(data=datasets(min_n=2, max_d=6), k_frac=st.floats(0, 1),
       p=st.sampled_from((1.0, 1.25, 1.5, 2.0, 3.0)), weighted=st.booleans(), wseed=st.integers(0, 99))
def test_lp_subspace_against_reference(data, k_frac, p, weighted, wseed):
    X, kind, scale = data
    n, d = X.shape
    if not np.any(X):
        return  # every fit of zero data is optimal; nothing to compare
    k = 1 + int(k_frac * (min(n, d) - 1))
    w = np.random.default_rng(wseed).uniform(0.1, 2.0, n).astype(X.dtype) if weighted else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (overflow, invalid) is a failure
        fit = lpfast.lp_subspace(X, k, p, weights=w)
    V = fit.basis
    assert V.shape == (d, k) and V.dtype == X.dtype
    assert np.isfinite(V).all()
    assert orthonormality_error(V) <= (1e-4 if X.dtype == np.float32 else 1e-10)
    total = zero_subspace_cost(X, p, w)
    rtol = FIT_RTOL[X.dtype.type]
    # the reported cost is the cost of the returned basis (DESIGN.md's definition)
    want = ref.subspace_cost(f64(X), f64(V), p, None if w is None else f64(w))
    assert abs(fit.cost - want) <= RTOL[X.dtype.type] * total
    assert fit.cost >= 0 and fit.history[-1] == fit.cost
    assert np.isfinite(fit.history).all()
    # subspace_cost agrees with the reference on the same basis
    assert abs(lpfast.subspace_cost(X, V, p, weights=w) - want) <= RTOL[X.dtype.type] * total
    if p <= 2:  # majorize-minimize: the cost never increases (up to rounding)
        steps = np.diff(fit.history)
        assert (steps <= RTOL[X.dtype.type] * total).all(), fit.history
    # not worse than the reference IRLS from the same (SVD) start
    _, hist, _, _ = ref.lp_subspace(f64(X), k, p, None if w is None else f64(w))
    assert fit.cost <= hist[-1] + rtol * total, (fit.cost, hist[-1], total)
    if p == 2.0:  # the weighted truncated SVD is the optimum (Eckart-Young)
        sw = np.ones(n) if w is None else f64(w)
        s = np.linalg.svd(np.sqrt(sw)[:, None] * f64(X), compute_uv=False)
        assert abs(fit.cost - float(np.sum(s[k:] ** 2))) <= RTOL[X.dtype.type] * total


@examples(16)
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from((2.0**-100, 1e-30, 1e-15, 1e15, 1e30, 2.0**100)),
       p=st.sampled_from((1.0, 1.5, 2.0)))
@example(dtype=np.float32, seed=0, scale=1e-30, p=1.0)  # issue 18's reproducer
@example(dtype=np.float32, seed=0, scale=1e20, p=1.0)  # issue 18: >= 1e19 raised RuntimeError
def test_lp_subspace_scale_equivariant(dtype, seed, scale, p):
    """The basis of s*X is the basis of X (principal angles ~0) and its cost is s^p times
    (issue 18: float32 at 1e-30 gave cosines 0.42 and 0.03; >= 1e19 raised RuntimeError)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((30, 6))
    a = lpfast.lp_subspace((X * scale).astype(dtype), 2, p)
    b = lpfast.lp_subspace(X.astype(dtype), 2, p)
    assert np.isfinite(a.basis).all()
    cos = principal_cosines(a.basis, b.basis)
    assert cos.min() >= (0.999 if dtype == np.float32 else 1 - 1e-8), cos
    assert a.cost / scale**p == pytest.approx(b.cost, rel=FIT_RTOL[dtype])


def _f32_at_2_to_100() -> np.ndarray:
    """float32 rows at ~1e30: their squares overflow float32 (a NaN cost before the fix)."""
    return (np.random.default_rng(0).standard_normal((5, 3)) * 2.0**100).astype(np.float32)


@examples(30)
@given(data=datasets(), p=st.sampled_from((0.5, 1.0, 1.5, 2.0, 3.0)), j_frac=st.floats(0, 1),
       weighted=st.booleans())
@example(data=(_f32_at_2_to_100(), "gauss", 2.0**100), p=1.0, j_frac=0.0, weighted=False)
def test_subspace_cost_against_reference(data, p, j_frac, weighted):
    X, _, _ = data
    n, d = X.shape
    j = 1 + int(j_frac * (d - 1))
    V = np.linalg.qr(np.random.default_rng(1).standard_normal((d, j)))[0]
    w = np.linspace(0.0, 2.0, n) if weighted else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = lpfast.subspace_cost(X, V.astype(X.dtype), p, weights=w)
    want = ref.subspace_cost(f64(X), f64(V.astype(X.dtype)), p, w)
    assert got >= 0
    # a distance is known to about eps * ||x|| (the basis is rounded to the dtype too), which
    # the power p < 1 amplifies: (c eps)^p relative, c eps for p >= 1
    rtol = (1000 * np.finfo(X.dtype).eps) ** min(p, 1.0)
    assert abs(got - want) <= rtol * zero_subspace_cost(X, p, w) + 1e-300


# -- Lewis weights and coresets -----------------------------------------------------------


def _issue18_rank_deficient() -> np.ndarray:
    """Issue 18's float32 rank-6 (23, 7) integer matrix: weights summed to 76 (max 16.7)."""
    r = np.random.default_rng(2969279501)
    X = r.integers(-3, 4, (23, 6)).astype(float) @ r.integers(-3, 4, (6, 7)).astype(float)
    return X.astype(np.float32)


@examples(40)
@given(data=datasets(min_n=1, max_n=30), p=st.sampled_from((1.0, 1.5, 2.0, 2.5, 3.0, 3.9)))
@example(data=(_issue18_rank_deficient(), "lowrank_int", 1.0), p=2.5)
def test_lewis_weights_against_reference(data, p):
    X, kind, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the fixed-point map contracts by |1 - p/2| per step: the default max_iter = 100 is
        # ample up to p = 3 (0.5), but not at 3.9 (0.95), where it is documented to warn
        w = lpfast.lewis_weights(X, p, max_iter=100 if p <= 3 else 2000)
    assert w.shape == (X.shape[0],) and w.dtype == X.dtype
    assert np.isfinite(w).all() and (w >= 0).all()
    atol = 2e-3 if X.dtype == np.float32 else 1e-6
    assert (w <= 1 + atol).all(), w.max()  # each weight is a leverage score of a rescaled X
    assert float(w.sum(dtype=np.float64)) == pytest.approx(rank_of(X), abs=X.shape[0] * atol)
    assert (w[~np.any(X, axis=1)] == 0).all()  # zero rows weigh nothing
    np.testing.assert_allclose(w, ref.lewis_weights(f64(X), p), rtol=0, atol=atol)


@examples(12)
@given(data=datasets(min_n=60, max_n=90, max_d=6, kinds=("gauss", "zero_rows", "duplicated", "outliers")),
       p=st.sampled_from((1.0, 2.0, 3.0)), seed=st.integers(0, 1000))
def test_lewis_weights_sketch_invariants(data, p, seed):
    """The sketch is approximate, but still: finite, non-negative, summing to the rank."""
    X, _, _ = data
    if X.shape[0] < 8 * X.shape[1]:
        return
    w = lpfast.lewis_weights(X, p, method="sketch", seed=seed)
    assert np.isfinite(w).all() and (w >= 0).all()
    assert float(w.sum(dtype=np.float64)) == pytest.approx(rank_of(X), rel=1e-3, abs=1e-3)
    assert (w[~np.any(X, axis=1)] == 0).all()


@examples(20)
@given(data=datasets(min_n=1, max_n=30), m=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       uniform=st.sampled_from((0.0, 0.1, 1.0)), p=st.sampled_from((1.0, 2.0)))
def test_lewis_sample_draws_as_documented(data, m, seed, uniform, p):
    """(indices, weights) are the documented draws from the documented probabilities."""
    X, _, _ = data
    idx, wts = lpfast.lewis_sample(X, m, p, seed=seed, uniform=uniform)
    n = X.shape[0]
    assert idx.dtype == np.int64 and wts.dtype == X.dtype
    assert (np.diff(idx) > 0).all() and idx.min() >= 0 and idx.max() < n
    lw = f64(lpfast.lewis_weights(X, p, tol=1e-6))
    q = (1 - uniform) * lw / lw.sum() + uniform / n if lw.sum() > 0 else np.full(n, 1.0 / n)
    q = q / q.sum()
    draws = np.random.default_rng(seed).choice(n, size=m, replace=True, p=q)
    want_idx, counts = np.unique(draws, return_counts=True)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(f64(wts), counts / (m * q[want_idx]), rtol=RTOL[X.dtype.type])
    assert np.isfinite(wts).all() and (wts > 0).all()


# -- k-subspaces ----------------------------------------------------------------------------


def _check_assignment(X, bases, labels, rtol, total2):
    """labels put each row on a nearest basis (ties within rounding allowed)."""
    _, d2_ref = ref.k_subspaces_assign(f64(X), f64(bases))
    V = f64(bases)
    d2_all = np.stack([np.sum((f64(X) - f64(X) @ Vc @ Vc.T) ** 2, axis=1) for Vc in V], axis=1)
    got = d2_all[np.arange(len(X)), labels]
    assert (got <= d2_all.min(axis=1) + rtol * total2).all()
    return got


@examples(30)
@given(data=datasets(min_n=4, max_n=30, min_d=2, max_d=6), K=st.integers(1, 3),
       j_frac=st.floats(0, 1), p=st.sampled_from((1.0, 1.5, 2.0)), seed=st.integers(0, 999),
       use_init=st.booleans())
def test_k_subspaces_against_reference(data, K, j_frac, p, seed, use_init):
    X, kind, scale = data
    n, d = X.shape
    j = 1 + int(j_frac * (d - 2))  # 1 <= j < d
    if K * j > n:
        K = max(1, n // j)
    rng = np.random.default_rng(seed)
    init = rng.standard_normal((K, d, j)).astype(X.dtype) if use_init else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ks = lpfast.k_subspaces(X, K, j, p, init_bases=init, seed=seed, n_init=2)
    B = ks.bases
    assert B.shape == (K, d, j) and B.dtype == X.dtype
    assert np.isfinite(B).all(), "non-finite bases"
    assert max(orthonormality_error(b) for b in B) <= (1e-4 if X.dtype == np.float32 else 1e-10)
    rtol = RTOL[X.dtype.type]
    total2 = zero_subspace_cost(X, 2.0)
    d2 = _check_assignment(X, B, ks.labels, rtol, total2)
    total = zero_subspace_cost(X, p)
    # dist^2 = ||x||^2 - ||V^T x||^2 (DESIGN.md, the reference's formula too) is known to
    # about eps ||x||^2, so dist^p to (c eps)^(p/2) relative: sqrt(eps) at p = 1
    cost_rtol = max(rtol, (1000 * np.finfo(X.dtype).eps) ** (p / 2))
    assert abs(ks.cost - float(np.sum(d2 ** (p / 2)))) <= cost_rtol * total + 1e-300
    assert ks.cost >= 0 and min(ks.history) == pytest.approx(ks.cost, rel=1e-12, abs=1e-300)
    np.testing.assert_array_equal(ks.predict(X), ks.labels)
    Y = (rng.standard_normal((5, d)) * scale).astype(X.dtype)
    _check_assignment(Y, B, ks.predict(Y), rtol, zero_subspace_cost(Y, 2.0))
    if use_init:  # one Lloyd run from the same bases: not worse than the reference's
        _, _, ref_cost, _, _ = ref.k_subspaces_lloyd(f64(X), init, p, eps=ks.fit_info["eps"])
        assert ks.cost <= ref_cost + FIT_RTOL[X.dtype.type] * total, (ks.cost, ref_cost)


@examples(16)
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from((2.0**-100, 1e-30, 1e30, 2.0**100)), p=st.sampled_from((1.0, 2.0)))
@example(dtype=np.float32, seed=77, scale=2.0**100, p=2.0)  # issue 18's reproducer (NaN bases)
def test_k_subspaces_scale_equivariant(dtype, seed, scale, p):
    """Same start bases on s*X and X: same cost up to s^p, finite bases (issue 18: float32
    at 2**100 with init_bases returned NaN bases)."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(6, 40)), int(rng.integers(3, 8))
    X = rng.standard_normal((n, d))
    init = rng.standard_normal((2, d, 2)).astype(dtype)  # one dtype: mixing is a TypeError
    a = lpfast.k_subspaces((X * scale).astype(dtype), 2, 2, p, init_bases=init)
    b = lpfast.k_subspaces(X.astype(dtype), 2, 2, p, init_bases=init)
    assert np.isfinite(a.bases).all() and np.isfinite(a.cost)
    assert a.cost / scale**p == pytest.approx(b.cost, rel=FIT_RTOL[dtype])


# -- doped Kronecker products ---------------------------------------------------------------


@st.composite
def kron_problems(draw):
    dtype = draw(st.sampled_from(DTYPES))
    R = draw(st.integers(1, 3))
    m1, n1, m2, n2 = (draw(st.integers(1, 5)) for _ in range(4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = rng.standard_normal((R, m1, n1))
    B = rng.standard_normal((R, m2, n2))
    m, n = m1 * m2, n1 * n2
    density = draw(st.sampled_from((0.0, 0.1, 0.5, 1.0)))
    S = sp.random(m, n, density=density, format="csr", random_state=rng) if density else None
    bias = rng.standard_normal(m) if draw(st.booleans()) else None
    lead = draw(st.sampled_from(((), (1,), (7,), (2, 3), (0,))))
    x = rng.standard_normal((*lead, n))
    if x.size and draw(st.booleans()):  # adversarial rows: zero and duplicated
        flat = x.reshape(-1, n)
        flat[0] = 0.0
        flat[-1] = flat[0 if len(flat) == 1 else 1]
    # x carries the scale; A, B, S, bias are O(1): |y| <= ~n * scale * max|W| fits both dtypes
    scale = draw(st.sampled_from(POW2_SCALES + DEC_SCALES))
    x = x * scale
    if bias is not None:
        bias = bias * scale
    if R == 1 and draw(st.booleans()):
        A, B = A[0], B[0]  # the 2-d form
    cast = (lambda a: None if a is None else a.astype(dtype))
    if S is not None:
        S = sp.csr_array((S.data.astype(dtype), S.indices, S.indptr), shape=S.shape)
    return cast(x), cast(A), cast(B), S, cast(bias)


def _assert_matches_dense(y, x, A, B, S, bias):
    W = ref.kron_dense(f64(A), f64(B), None if S is None else S.astype(np.float64))
    xs = f64(x).reshape(-1, W.shape[1])
    want = ref.doped_kp_matmul(f64(x), f64(A), f64(B), None if S is None else S.astype(np.float64),
                               None if bias is None else f64(bias))
    # each Kronecker term and S are summed separately: bound by |A_r| (x) |B_r| + |S|
    absW = ref.kron_dense(np.abs(f64(A)), np.abs(f64(B)), None if S is None else abs(S).astype(np.float64))
    bound = np.abs(xs) @ absW.T + (0 if bias is None else np.abs(f64(bias)))
    eps = np.finfo(y.dtype).eps
    tol = 4 * (W.shape[1] + 2) * eps * bound.reshape(want.shape) + np.finfo(y.dtype).tiny
    assert y.shape == want.shape and y.dtype == x.dtype
    assert np.isfinite(y).all()
    assert (np.abs(f64(y) - want) <= tol).all(), np.abs(f64(y) - want).max()


@examples(60)
@given(problem=kron_problems())
def test_doped_kp_matmul_against_reference(problem):
    x, A, B, S, bias = problem
    before = [a.copy() for a in (x, A, B, bias) if a is not None]
    y = lpfast.doped_kp_matmul(x, A, B, S, bias)
    _assert_matches_dense(y, x, A, B, S, bias)
    op = lpfast.DopedKronecker(A, B, S, bias)
    _assert_matches_dense(op(x), x, A, B, S, bias)
    # the operator's own parts: W, and a round trip through plain arrays
    np.testing.assert_allclose(
        f64(op.to_dense()), ref.kron_dense(f64(A), f64(B), None if S is None else S.astype(np.float64)),
        rtol=RTOL[x.dtype.type], atol=0)
    again = lpfast.DopedKronecker.from_dict(op.to_dict())
    np.testing.assert_array_equal(again(x), op(x))
    out = np.empty_like(y)
    assert lpfast.doped_kp_matmul(x, A, B, S, bias, out=out) is out
    np.testing.assert_array_equal(out, y)
    for a, b in zip([a for a in (x, A, B, bias) if a is not None], before):
        np.testing.assert_array_equal(a, b)  # never modified


@st.composite
def kron_targets(draw):
    dtype = draw(st.sampled_from(DTYPES))
    m1, n1, m2, n2 = (draw(st.integers(1, 5)) for _ in range(4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(("gauss", "kron", "zero", "lowrank_int", "outliers")))
    m, n = m1 * m2, n1 * n2
    if kind == "kron":  # exactly a sum of two Kronecker products
        W = sum(np.kron(rng.standard_normal((m1, n1)), rng.standard_normal((m2, n2))) for _ in range(2))
    elif kind == "zero":
        W = np.zeros((m, n))
    else:
        W = _matrix(rng, kind, m, n, max(1, min(m, n) // 2))
    scale = draw(st.sampled_from(POW2_SCALES + DEC_SCALES))
    return (W * scale).astype(dtype), (m1, n1), (m2, n2)


def _rearranged(W, a_shape, b_shape):
    (m1, n1), (m2, n2) = a_shape, b_shape
    return f64(W).reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


@examples(40)
@given(target=kron_targets(), rank_frac=st.floats(0, 1))
def test_nearest_kronecker_is_optimal(target, rank_frac):
    """||W - sum kron(A_r, B_r)||_F^2 = the tail of the rearranged W's singular values
    (Van Loan-Pitsianis), the reference's error."""
    W, a_shape, b_shape = target
    top = min(a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])
    rank = 1 + int(rank_frac * (top - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op = lpfast.nearest_kronecker(W, a_shape, b_shape, rank)
    assert op.A.shape == (rank, *a_shape) and op.B.shape == (rank, *b_shape)
    assert op.dtype == W.dtype and np.isfinite(op.A).all() and np.isfinite(op.B).all()
    s = np.linalg.svd(_rearranged(W, a_shape, b_shape), compute_uv=False)
    norm2 = float(np.sum(f64(W) ** 2))
    err2 = float(np.sum((f64(W) - f64(op.to_dense())) ** 2))
    assert abs(err2 - float(np.sum(s[rank:] ** 2))) <= 10 * RTOL[W.dtype.type] * norm2
    A_ref, B_ref = ref.nearest_kronecker(f64(W), a_shape, b_shape, rank)
    ref_err2 = float(np.sum((f64(W) - ref.kron_dense(A_ref, B_ref)) ** 2))
    assert err2 <= ref_err2 + 10 * RTOL[W.dtype.type] * norm2


@examples(30)
@given(target=kron_targets(), density=st.sampled_from((0.0, 0.05, 0.3, 1.0)), n_iter=st.integers(0, 3))
def test_doped_kp_fit_never_worse_than_baseline(target, density, n_iter):
    """The fit's error never exceeds nearest_kronecker plus top-|residual| doping (the
    documented baseline), and fit_info reports the error of what is returned."""
    W, a_shape, b_shape = target
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op = lpfast.doped_kp_fit(W, a_shape, b_shape, density, n_iter=n_iter)
    W64 = f64(W)
    norm = float(np.linalg.norm(W64))
    nnz = int(round(density * W.size))
    assert op.nnz <= nnz
    A_ref, B_ref = ref.nearest_kronecker(W64, a_shape, b_shape, 1)
    resid = (W64 - ref.kron_dense(A_ref, B_ref)).ravel()
    resid[np.argsort(-np.abs(resid), kind="stable")[:nnz]] = 0.0
    baseline = float(np.linalg.norm(resid))
    err = float(np.linalg.norm(W64 - f64(op.to_dense())))
    tol = 10 * RTOL[W.dtype.type] * norm
    assert err <= baseline + tol, (err, baseline)
    if norm > 0:
        assert min(op.fit_info["relative_error"]) == pytest.approx(err / norm, abs=tol / norm)


# -- low rank + sparse ----------------------------------------------------------------------


@examples(30)
@given(data=datasets(min_n=1, max_n=12, max_d=8), r=st.integers(1, 4),
       density=st.sampled_from((0.0, 0.2, 1.0)), with_bias=st.booleans(),
       lead=st.sampled_from(((), (1,), (5,), (2, 2))), seed=st.integers(0, 999))
def test_low_rank_sparse_against_dense(data, r, density, with_bias, lead, seed):
    W, _, scale = data
    out, inp = W.shape
    rng = np.random.default_rng(seed)
    dt = W.dtype
    U, V = rng.standard_normal((out, r)).astype(dt), rng.standard_normal((r, inp)).astype(dt)
    S = sp.random(out, inp, density=density, format="csr", random_state=rng, dtype=dt) if density else None
    bias = rng.standard_normal(out).astype(dt) if with_bias else None
    op = lpfast.LowRankSparse(U, V, S, bias)
    x = (rng.standard_normal((*lead, inp)) * scale).astype(dt)
    y = op(x)
    W_dense = f64(U) @ f64(V) + (0 if S is None else S.toarray().astype(np.float64))
    np.testing.assert_allclose(f64(op.to_dense()), W_dense, rtol=RTOL[dt.type], atol=RTOL[dt.type] * np.abs(W_dense).max())
    want = f64(x) @ W_dense.T + (0 if bias is None else f64(bias))
    absW = np.abs(f64(U)) @ np.abs(f64(V)) + (0 if S is None else np.abs(S.toarray()).astype(np.float64))
    bound = np.abs(f64(x)) @ absW.T
    bound = bound + (0 if bias is None else np.abs(f64(bias)))
    assert y.shape == (*lead, out) and y.dtype == dt
    assert (np.abs(f64(y) - want) <= 4 * (inp + r + 2) * np.finfo(dt).eps * bound + np.finfo(dt).tiny).all()
    again = lpfast.LowRankSparse.from_dict(op.to_dict())
    np.testing.assert_array_equal(again(x), y)


def _gram(rng, d, kind):
    """A symmetric PSD input Gram: full, rank-deficient, or diagonal-only (as scale)."""
    Xc = rng.standard_normal((max(1, d // 2) if kind == "deficient" else 3 * d, d))
    return Xc.T @ Xc / len(Xc)


@examples(30)
@given(data=datasets(min_n=2, max_n=12, min_d=2, max_d=8), r_frac=st.floats(0, 1),
       gram=st.sampled_from((None, "full", "deficient", "scale")), seed=st.integers(0, 999))
def test_lowrank_fit_never_worse_than_svd(data, r_frac, gram, seed):
    W, _, _ = data
    out, inp = W.shape
    r = 1 + int(r_frac * (min(out, inp) - 1))
    rng = np.random.default_rng(seed)
    kw = {}
    C = np.eye(inp)
    if gram in ("full", "deficient"):
        C = _gram(rng, inp, gram)
        kw["input_gram"] = C
    elif gram == "scale":
        s = rng.uniform(0.1, 3.0, inp)
        C = np.diag(s)
        kw["input_scale"] = s
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        U, V = lpfast.lowrank_fit(W, r, **kw)
    assert U.shape == (out, r) and V.shape == (r, inp) and U.dtype == W.dtype
    assert np.isfinite(U).all() and np.isfinite(V).all()
    W64 = f64(W)
    D = W64 - f64(U) @ f64(V)
    err = float(np.trace(D @ C @ D.T))
    Us, s, Vt = np.linalg.svd(W64, full_matrices=False)
    Dsvd = W64 - (Us[:, :r] * s[:r]) @ Vt[:r]
    svd_err = float(np.trace(Dsvd @ C @ Dsvd.T))
    base = float(np.trace(W64 @ C @ W64.T))
    assert err <= svd_err + 10 * FIT_RTOL[W.dtype.type] * base, (err, svd_err, base)
    assert lpfast.calibration_error(W, (U, V), **kw) == pytest.approx(err, rel=1e-6, abs=1e-12 * base + 1e-300)


@examples(20)
@given(data=datasets(min_n=2, max_n=10, min_d=2, max_d=8), r=st.integers(1, 3),
       density=st.sampled_from((0.0, 0.1, 0.5)), gram=st.sampled_from((None, "full", "deficient")),
       seed=st.integers(0, 999))
def test_lowrank_sparse_fit_never_worse_than_weights_only(data, r, density, gram, seed):
    W, _, _ = data
    r = min(r, *W.shape)
    kw = {} if gram is None else {"input_gram": _gram(np.random.default_rng(seed), W.shape[1], gram)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op = lpfast.lowrank_sparse_fit(W, r, density, n_iter=2, **kw)
    assert op.dtype == W.dtype and op.nnz <= int(round(density * W.size))
    assert np.isfinite(op.to_dense()).all()
    err = lpfast.calibration_error(W, op, relative=True, **kw)
    assert err == pytest.approx(op.fit_info["calibration_error"], rel=1e-3, abs=1e-6)
    assert op.fit_info["calibration_error"] <= op.fit_info["weights_only_error"] + 1e-12
    assert 0 <= err <= 1 + 1e-6 or not np.any(W)


@examples(30)
@given(data=datasets(min_n=1, max_n=10, max_d=8), seed=st.integers(0, 999),
       gram=st.sampled_from((None, "full", "deficient", "scale")), relative=st.booleans())
def test_calibration_error_is_the_trace(data, seed, gram, relative):
    W, _, _ = data
    rng = np.random.default_rng(seed)
    W_hat = (f64(W) * rng.uniform(0.5, 1.5, W.shape)).astype(W.dtype)
    kw, C = {}, np.eye(W.shape[1])
    if gram in ("full", "deficient"):
        C = kw["input_gram"] = _gram(rng, W.shape[1], gram)
    elif gram == "scale":
        s = rng.uniform(0.1, 3.0, W.shape[1])
        C, kw["input_scale"] = np.diag(s), s
    D = f64(W) - f64(W_hat)
    want = float(np.trace(D @ C @ D.T))
    base = float(np.trace(f64(W) @ C @ f64(W).T))
    got = lpfast.calibration_error(W, W_hat, relative=relative, **kw)
    assert got >= 0
    if relative:
        want = want / base if base > 0 else 0.0
        base = 1.0
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12 * base + 1e-300)


# -- row doping, usage weights, shapes, hidden pruning -----------------------------------------


@examples(12)
@given(data=datasets(min_n=6, max_n=20, min_d=2, max_d=6), method=st.sampled_from(("svd", "lp", "projective")),
       frac=st.sampled_from((0.3, 0.6)), weighted=st.booleans(), seed=st.integers(0, 99))
def test_row_doped_fit_against_reference(data, method, frac, weighted, seed):
    E, _, _ = data
    n, d = E.shape
    w = np.random.default_rng(seed).uniform(0.0, 2.0, n) if weighted else None
    kw = {"n_subspaces": 2} if method == "projective" else {}
    p = 1.5 if method == "lp" else 2.0
    budget = max(int(frac * n * d), 2 * (n + 2 * d + 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rd = lpfast.row_doped_fit(E, method, budget, weights=w, p=p, seed=seed, max_iter=20,
                                  n_init=2, **kw)
    state = rd.to_dict()
    rec = rd.reconstruct()
    assert rec.dtype == E.dtype and np.isfinite(rec).all()
    np.testing.assert_allclose(f64(rec), f64(ref.row_doped_reconstruct(state)), rtol=0,
                               atol=RTOL[E.dtype.type] * max(float(np.abs(f64(E)).max()), 1e-300))
    assert rd.n_params == ref.row_doped_n_params(method, n, d, rd.rank, rd.n_exact,
                                                 rd.n_subspaces if method == "projective" else 1)
    assert rd.n_params <= budget
    np.testing.assert_array_equal(rec[rd.exact_indices], E[rd.exact_indices])
    ww = np.ones(n) if w is None else w
    num = float(ww @ np.sum((f64(E) - f64(rec)) ** 2, axis=1))
    den = float(ww @ np.sum(f64(E) ** 2, axis=1))
    want = np.sqrt(num / den) if den > 0 else 0.0
    assert rd.error == pytest.approx(want, rel=1e-3, abs=1e-6)


@examples(30)
@given(counts=st.lists(st.one_of(st.integers(0, 10**6), st.sampled_from((0.0, 1e-30, 1e30))),
                       min_size=1, max_size=20),
       power=st.sampled_from((0.0, 0.5, 1.0, 2.0)), floor=st.sampled_from((0.0, 1.0, 5.0)),
       normalize=st.sampled_from(("mean", "sum", None)))
def test_usage_weights_formula(counts, power, floor, normalize):
    c = np.asarray(counts, dtype=np.float64)
    raw = np.maximum(c, floor) ** power
    if not raw.sum() > 0 or not np.isfinite(raw).all():
        with pytest.raises(ValueError, match=r"^(counts|floor|power)"):
            lpfast.usage_weights(c, power, floor, normalize=normalize)
        return
    w = lpfast.usage_weights(c, power, floor, normalize=normalize)
    want = raw / raw.mean() if normalize == "mean" else raw / raw.sum() if normalize == "sum" else raw
    np.testing.assert_allclose(w, want, rtol=1e-12)


@examples(40)
@given(m=st.integers(1, 60), n=st.integers(1, 60), limit=st.integers(1, 6))
def test_kron_factor_shapes_by_brute_force(m, n, limit):
    got = lpfast.kron_factor_shapes(m, n, limit)
    cands = []
    for m1 in range(1, m + 1):
        for n1 in range(1, n + 1):
            if m % m1 or n % n1:
                continue
            m2, n2 = m // m1, n // n1
            cands.append(((m1 * n1 == 1) or (m2 * n2 == 1), m1 * n1 + m2 * n2,
                          abs(m1 - n1) + abs(m2 - n2), (m1, n1), (m2, n2)))
    cands.sort()
    assert got == [(a, b) for *_, a, b in cands[:limit]]


@examples(20)
@given(data=datasets(min_n=1, max_n=8, min_d=2, max_d=10), keep_frac=st.floats(0.01, 1.0),
       gram=st.sampled_from(("full", "deficient")), seed=st.integers(0, 999))
def test_prune_hidden_units_refit_never_worse(data, keep_frac, gram, seed):
    W_out, _, _ = data
    h = W_out.shape[1]
    C = _gram(np.random.default_rng(seed), h, gram)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = lpfast.prune_hidden_units(W_out, C, keep_frac)
    k = lpfast.hidden_keep_count(keep_frac, h)
    assert res.keep.shape == (k,) and (np.diff(res.keep) > 0).all()
    assert res.W_out.shape == (W_out.shape[0], k) and res.W_out.dtype == W_out.dtype
    assert np.isfinite(res.W_out).all()
    W = f64(W_out)
    total = float(np.trace(W @ C @ W.T))

    def rel(Vk):
        D = W.copy()
        D[:, res.keep] -= f64(Vk)
        return float(np.trace(D @ C @ D.T)) / total if total > 0 else 0.0

    assert res.error_before == pytest.approx(rel(W[:, res.keep]), rel=1e-6, abs=1e-9)
    assert res.error_after == pytest.approx(rel(res.W_out), rel=1e-3, abs=1e-6)
    assert res.error_after <= res.error_before + 1e-9
