"""The validation floor (lpfast._validate) as every public function sees it: one rule per kind
of argument, the same error type and argument name whichever function is called."""

from __future__ import annotations

import numpy as np
import pytest

import lpfast
from lpfast import _validate

from shared import DTYPES

X = np.random.default_rng(0).standard_normal((60, 6))

# Each public function taking per-row weights or a seed, as f(weights=..., seed=...).
WEIGHTED = {
    "lp_subspace": lambda **kw: lpfast.lp_subspace(X, 2, **kw),
    "subspace_cost": lambda **kw: lpfast.subspace_cost(X, np.eye(6)[:, :2], **kw),
    "k_subspaces": lambda **kw: lpfast.k_subspaces(X, 2, 2, n_init=1, seed=0, **kw),
    "row_doped_fit": lambda **kw: lpfast.row_doped_fit(X, "svd", 120, **kw),
    "plan_compression": lambda **kw: lpfast.plan_compression(X, 4, candidates=["svd"], **kw),
}
SEEDED = {
    "k_subspaces": lambda seed: lpfast.k_subspaces(X, 2, 2, n_init=1, seed=seed).labels,
    "lewis_sample": lambda seed: lpfast.lewis_sample(X, 20, seed=seed)[0],
    "lewis_weights": lambda seed: lpfast.lewis_weights(X, method="sketch", seed=seed),
    "plan_compression": lambda seed: [r["error"] for r in lpfast.plan_compression(
        X, 1.5, candidates=["projective:2"], seed=seed).rows],
}


@pytest.mark.parametrize("name", list(WEIGHTED))
@pytest.mark.parametrize(("weights", "exc", "match"), [
    (np.ones(59), ValueError, r"^weights: expected shape \(60,\)"),
    (-np.ones(60), ValueError, "^weights: must be non-negative"),
    (np.zeros(60), ValueError, "^weights: must have a positive sum"),
    (np.full(60, np.nan), ValueError, "^weights: contains NaN or Inf"),
    (np.ones((60, 1)), ValueError, "^weights: expected a 1-d array"),
    (np.ones(60, dtype=complex), TypeError, "^weights: expected a real floating-point"),
])
def test_row_weights_one_rule(name, weights, exc, match):
    with pytest.raises(exc, match=match):
        WEIGHTED[name](weights=weights)


@pytest.mark.parametrize("name", list(SEEDED))
def test_seeds_one_rule(name):
    f = SEEDED[name]
    np.testing.assert_array_equal(f(7), f(7))  # same seed, same result
    np.testing.assert_array_equal(f(7), f(np.int64(7)))  # NumPy integers are integers
    f(np.random.default_rng(1))
    f(np.random.SeedSequence(3))
    f(None)
    with pytest.raises(ValueError, match="^seed: expected a non-negative integer"):
        f(-1)
    for bad in ("1", 1.5, True):
        with pytest.raises(TypeError, match="^seed: expected None, a non-negative integer"):
            f(bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_irls_floor_for_every_fit(dtype):
    rng = np.random.default_rng(2)
    Y = (rng.standard_normal((80, 5)) * 3).astype(dtype)
    w = rng.random(80) + 0.1
    # the documented formula, in float64: sqrt(eps(dtype)) * weighted RMS row norm
    rms = np.sqrt(w @ np.einsum("ij,ij->i", Y, Y, dtype=np.float64) / w.sum())
    want = np.sqrt(np.finfo(dtype).eps) * rms
    got_lp = lpfast.lp_subspace(Y, 2, weights=w, max_iter=1).eps
    got_ks = lpfast.k_subspaces(Y, 2, 2, p=1.0, weights=w, n_init=1, max_iter=1,
                                seed=0).fit_info["eps"]
    assert got_lp == _validate.default_eps(Y, w.astype(dtype))  # its weights in X's dtype
    assert got_ks == _validate.default_eps(Y, w)  # its weights in float64
    assert got_lp == pytest.approx(want, rel=1e-6) and got_ks == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, -1.0, np.inf, "a"])
def test_eps_one_rule(eps):
    exc = TypeError if isinstance(eps, str) else ValueError
    with pytest.raises(exc, match="^eps: "):
        lpfast.lp_subspace(X, 2, eps=eps)
    with pytest.raises(exc, match="^eps: "):
        lpfast.k_subspaces(X, 2, 2, eps=eps)


def test_doped_matmul_shapes_checks_shapes_alone():
    assert _validate.doped_matmul_shapes((2, 3, 4), (2, 5, 6), (7, 24), (15,)) == (15, 24)
    cases = [(((3, 4), (1, 5, 6)), "A, B: expected"), (((2, 3, 4), (1, 5, 6)), "Kronecker ranks"),
             (((0, 3, 4), (0, 5, 6)), "at least one"),
             (((1, 3, 4), (1, 5, 6), (2, 23)), r"^x: expected shape \(\.\.\., 24\)"),
             (((1, 3, 4), (1, 5, 6), (), None), r"^x: "),
             (((1, 3, 4), (1, 5, 6), None, (14,)), r"^bias: expected shape \(15,\)")]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            _validate.doped_matmul_shapes(*args)


def test_factor_shapes_name_both_arguments():
    assert _validate.as_factor_shapes((6, 8), (2, 4), (3, 2)) == ((2, 4), (3, 2))
    with pytest.raises(ValueError, match="a_shape=.*b_shape=.*W's shape"):
        _validate.as_factor_shapes((6, 8), (2, 2), (3, 2))
    with pytest.raises(TypeError, match=r"^a_shape: expected a pair"):
        _validate.as_factor_shapes((6, 8), 3, (3, 2))
    with pytest.raises(ValueError, match=r"^b_shape\[0\]"):
        _validate.as_factor_shapes((6, 8), (2, 4), (-3, 2))


# -- arrays that are not plain arrays: errors naming the argument (issue 18) -------------------

def test_ragged_sequence_names_the_argument():
    with pytest.raises(ValueError, match=r"^X: expected a rectangular array, got a ragged"):
        lpfast.lp_subspace([[1.0, 2.0, 3.0], [4.0, 5.0]], 1)


def test_torch_bfloat16_computes_in_float64():
    torch = pytest.importorskip("torch")
    Xt = torch.from_numpy(X).to(torch.bfloat16)
    fit = lpfast.lp_subspace(Xt, 2)
    want = lpfast.lp_subspace(Xt.double().numpy(), 2)
    assert fit.basis.dtype == np.float64  # as float16: NumPy has no bfloat16
    np.testing.assert_array_equal(fit.basis, want.basis)
    y = lpfast.doped_kp_matmul(torch.ones(2, 6, dtype=torch.bfloat16), np.ones((2, 3)),
                               np.ones((3, 2)))
    np.testing.assert_array_equal(y, np.full((2, 6), 6.0))


def test_torch_tensors_numpy_cannot_read():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"^X: a meta tensor has no values"):
        lpfast.lp_subspace(torch.empty(60, 6, device="meta"), 2)
    with pytest.raises(TypeError, match=r"^X: cannot read this tensor as an array"):
        lpfast.lp_subspace(torch.from_numpy(X).to_sparse(), 2)
    with pytest.raises(TypeError, match=r"^x: expected a real floating-point"):
        lpfast.doped_kp_matmul(torch.ones(1, 6, dtype=torch.complex64), np.ones((2, 3)),
                               np.ones((3, 2)))
