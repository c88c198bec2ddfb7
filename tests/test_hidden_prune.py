"""lpfast.prune_hidden_units: unit choice and least-squares refit against dense NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from shared import DTYPES

import lpfast
from lpfast import prune_hidden_units


def ffn_case(d_out=12, h=40, n=300, seed=0, dead=0):
    """W2 (d_out, h) and the mean Gram of GELU-like (non-negative, correlated) activations,
    with ``dead`` units that are never active (zero rows/columns in C)."""
    rng = np.random.default_rng(seed)
    W2 = rng.standard_normal((d_out, h)) * rng.uniform(0.2, 2.0, h)
    A = np.maximum(rng.standard_normal((n, 8)) @ rng.standard_normal((8, h))
                   + 0.3 * rng.standard_normal((n, h)), 0.0)
    A[:, :dead] = 0.0
    return W2, A.T @ A / n, A


def dense_reference(W2, A, k):
    """Scores, kept set and LS refit from the activations A themselves (lstsq on A)."""
    scores = (W2 ** 2).sum(0) * (A ** 2).mean(0)
    K = np.sort(np.argsort(-scores, kind="stable")[:k])
    V = np.linalg.lstsq(A[:, K], A @ W2.T, rcond=None)[0].T  # min ‖A W2ᵀ − A_K Vᵀ‖
    return scores, K, V


def rel_err(W2, V, K, A):
    Y = A @ W2.T
    return float(((Y - A[:, K] @ V.T) ** 2).sum() / (Y ** 2).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 7, 20, 39])
def test_matches_dense_least_squares(dtype, k):
    W2, C, A = ffn_case(seed=k)
    W2 = W2.astype(dtype).astype(np.float64)  # the reference sees the float32 values
    r = prune_hidden_units(W2.astype(dtype), C, k, ridge=0.0)
    scores, K, V = dense_reference(W2, A, k)
    np.testing.assert_allclose(r.scores, scores, rtol=1e-10)
    np.testing.assert_array_equal(r.keep, K)
    assert r.keep.dtype == np.int64 and r.W_out.dtype == dtype and r.W_out.shape == (12, k)
    tol = 1e-4 if dtype == np.float32 else 1e-8
    np.testing.assert_allclose(r.W_out, V, rtol=tol, atol=tol * np.abs(V).max())
    assert r.refit
    assert r.error_after == pytest.approx(rel_err(W2, V, K, A), rel=1e-6, abs=1e-12)
    assert r.error_before == pytest.approx(rel_err(W2, W2[:, K], K, A), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_all_gives_w_back(dtype):
    W2, C, _ = ffn_case()
    for keep in (40, 1.0):
        r = prune_hidden_units(W2.astype(dtype), C, keep)
        np.testing.assert_array_equal(r.keep, np.arange(40))
        np.testing.assert_array_equal(r.W_out, W2.astype(dtype))
        assert r.error_before == 0.0 and r.error_after == 0.0 and not r.refit


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ridge", [0.0, 1e-6, 1e-2, 10.0])
def test_refit_never_worse_than_selection(seed, ridge):
    # Dead units make C[K, K] singular when kept; a large ridge biases the solve: the
    # returned fit must still be no worse than plain column selection.
    W2, C, A = ffn_case(seed=seed, dead=5 * (seed % 2))
    for keep in (0.1, 0.5, 0.9):
        r = prune_hidden_units(W2, C, keep, ridge=ridge)
        assert np.isfinite(r.W_out).all()
        assert r.error_after <= r.error_before + 1e-12
        assert r.error_after == pytest.approx(rel_err(W2, r.W_out, r.keep, A), rel=1e-6, abs=1e-12)
        if ridge <= 1e-6 and r.error_before > 1e-6:  # (keep 0.9 only drops dead units)
            assert r.refit and r.error_after < r.error_before


def test_dead_units_are_dropped_first_and_zero_gram():
    W2, C, _ = ffn_case(dead=10)
    r = prune_hidden_units(W2, C, 30)
    assert not set(range(10)) & set(r.keep.tolist())
    # All activations zero: nothing to fit, every choice is exact; no NaN anywhere.
    z = prune_hidden_units(W2, np.zeros((40, 40)), 0.5)
    assert z.error_before == 0.0 and z.error_after == 0.0 and np.isfinite(z.W_out).all()


def test_fraction_rounding_and_determinism():
    W2, C, _ = ffn_case()
    assert prune_hidden_units(W2, C, 0.5).keep.shape == (20,)
    assert prune_hidden_units(W2, C, 0.001).keep.shape == (1,)
    C_tie = np.eye(40)
    W_tie = np.ones((3, 40))  # every score equal: the lowest indices win
    np.testing.assert_array_equal(prune_hidden_units(W_tie, C_tie, 5).keep, np.arange(5))
    assert lpfast.hidden_keep_count(0.25, 1536) == 384


@pytest.mark.parametrize("keep", [0.5, 1, 0])
def test_keep_count_of_no_hidden_units_names_h(keep):
    """No hidden units: nothing to keep "at least 1" of (it returned 1 of 0 for 0.5)."""
    with pytest.raises(ValueError, match="h: "):
        lpfast.hidden_keep_count(keep, 0)


def test_bad_input():
    W2, C, _ = ffn_case()
    with pytest.raises(ValueError, match="hidden_gram: expected shape \\(40, 40\\)"):
        prune_hidden_units(W2, C[:-1, :-1], 10)
    with pytest.raises(ValueError, match="W_out: expected a 2-d"):
        prune_hidden_units(W2[0], C, 10)
    asym = C.copy()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="hidden_gram: must be symmetric"):
        prune_hidden_units(W2, asym, 10)
    neg = C.copy()
    neg[3, 3] = -1.0
    with pytest.raises(ValueError, match="hidden_gram: has a negative diagonal"):
        prune_hidden_units(W2, neg, 10)
    nan = C.copy()
    nan[2, 2] = np.nan
    with pytest.raises(ValueError, match="hidden_gram: contains NaN"):
        prune_hidden_units(W2, nan, 10)
    with pytest.raises(ValueError, match="W_out: contains NaN"):
        prune_hidden_units(np.full_like(W2, np.nan), C, 10)
    for bad in (0, 41, -1, 0.0, 1.5):
        with pytest.raises(ValueError, match="keep:"):
            prune_hidden_units(W2, C, bad)
    for bad in ("half", None, True):
        with pytest.raises(TypeError, match="keep:"):
            prune_hidden_units(W2, C, bad)
    with pytest.raises(ValueError, match="ridge:"):
        prune_hidden_units(W2, C, 10, ridge=-1.0)
    with pytest.raises(ValueError, match="score:"):
        prune_hidden_units(W2, C, 10, score="magnitude")
    with pytest.raises(TypeError, match="W_out:"):
        prune_hidden_units(W2.astype(complex), C, 10)
