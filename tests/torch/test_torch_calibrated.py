"""lpfast.torch.fit_linear, params_for_ratio and LowRankSparseLinear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import lpfast
from lpfast.torch import (
    DopedKroneckerLinear,
    LowRankLinear,
    LowRankSparseLinear,
    fit_linear,
    params_for_ratio,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def setup(dtype=torch.float64, out_f=24, in_f=20, seed=0):
    """A Linear and calibration inputs with a few outlier features."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(in_f, out_f, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g, dtype=dtype))
    X = torch.randn(300, in_f, generator=g, dtype=torch.float64)
    X[:, :2] *= 30.0
    return lin, X.to(dtype), X.T @ X


def output_error(layer, lin, X) -> float:
    with torch.no_grad():
        return float(((layer(X) - lin(X)) ** 2).sum())


def weight_params(layer) -> int:
    return layer.n_params - (0 if layer.bias is None else layer.bias.numel())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method, params", [
    ("lowrank", {"rank": 4}),
    ("lowrank_sparse", {"rank": 3, "density": 0.1, "n_iter": 2}),
    ("doped_kron", {"a_shape": (4, 4), "b_shape": (6, 5), "density": 0.1, "n_iter": 3}),
])
def test_fit_linear_matches_numpy_and_beats_weights_only(dtype, method, params):
    lin, X, C = setup(dtype)
    layer = fit_linear(lin, method, input_gram=C, **params)
    base = fit_linear(lin, method, **params)
    kind = {"lowrank": LowRankLinear, "lowrank_sparse": LowRankSparseLinear,
            "doped_kron": DopedKroneckerLinear}[method]
    assert type(layer) is kind and layer.bias.dtype == dtype
    assert torch.equal(layer.bias, lin.bias)
    W = lin.weight.detach().numpy()
    Cn = C.numpy()
    if method == "lowrank":
        U, V = lpfast.lowrank_fit(W, 4, input_gram=Cn)
        assert np.array_equal(layer.U.detach().numpy(), U) and np.array_equal(layer.V.detach().numpy(), V)
    elif method == "lowrank_sparse":
        op = lpfast.lowrank_sparse_fit(W, input_gram=Cn, **params)
        np.testing.assert_allclose(layer.dense_weight().numpy(), op.to_dense(), rtol=0, atol=TOL[dtype])
    else:
        op = lpfast.doped_kp_fit_calibrated(W, input_gram=Cn, **params)
        np.testing.assert_allclose(layer.dense_weight().numpy(), op.to_dense(), rtol=0, atol=TOL[dtype])
    assert layer.fit_info["calibration_error"] == pytest.approx(
        lpfast.calibration_error(W, layer.dense_weight().numpy(), Cn, relative=True), rel=1e-4)
    slack = 1 + (1e-4 if dtype == torch.float32 else 1e-9)
    assert output_error(layer, lin, X) <= output_error(base, lin, X) * slack
    # The forward is the dense recomputation.
    x = torch.randn(3, 2, 20, dtype=dtype)
    with torch.no_grad():
        want = x @ layer.dense_weight().T + layer.bias
        assert torch.allclose(layer(x), want, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


@pytest.mark.parametrize("method", ["lowrank", "lowrank_sparse", "doped_kron"])
@pytest.mark.parametrize("ratio", [2.0, 4.0])
def test_ratio_bounds_the_parameters(method, ratio):
    lin, X, C = setup(torch.float32, out_f=64, in_f=48)
    s = (X.double() ** 2).sum(0)
    layer = fit_linear(lin, method, input_scale=s, ratio=ratio)
    assert weight_params(layer) <= 64 * 48 / ratio
    assert weight_params(layer) >= 0.9 * 64 * 48 / ratio or method == "lowrank"
    base = fit_linear(lin, method, ratio=ratio)
    assert weight_params(base) == weight_params(layer)
    W = lin.weight.detach().numpy()
    errors = [lpfast.calibration_error(W, m.dense_weight().numpy(), input_scale=s.numpy())
              for m in (layer, base)]
    assert errors[0] <= errors[1] * (1 + 1e-4)


def test_params_for_ratio_rule():
    p = params_for_ratio("lowrank", 1536, 384, 2.0)
    assert p == {"rank": 153, "n_params": 153 * (1536 + 384)}
    p = params_for_ratio("lowrank_sparse", 1536, 384, 2.0, sparse_share=0.25)
    budget = 1536 * 384 // 2
    assert p["rank"] == int(0.75 * budget / 1920) and p["n_params"] == budget
    assert round(p["density"] * 1536 * 384) == budget - p["rank"] * 1920
    p = params_for_ratio("doped_kron", 1536, 384, 4.0, a_shape=(48, 24), b_shape=(32, 16), rank=2)
    assert p["n_params"] == 1536 * 384 // 4 and p["rank"] == 2
    with pytest.raises(ValueError, match="ratio"):
        params_for_ratio("lowrank", 10, 10, 100.0)
    with pytest.raises(ValueError, match="ratio"):
        params_for_ratio("lowrank", 10, 10, 0.5)
    with pytest.raises(ValueError, match="a_shape, b_shape"):
        params_for_ratio("doped_kron", 10, 10, 2.0)
    with pytest.raises(ValueError, match="method"):
        params_for_ratio("svd", 10, 10, 2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_low_rank_sparse_linear_layer(dtype):
    torch.manual_seed(0)
    layer = LowRankSparseLinear(12, 9, 3, density=0.2, dtype=dtype)
    assert layer.nnz == round(0.2 * 108) and layer.n_params == 3 * 21 + layer.nnz + 9
    with torch.no_grad():
        layer.S_values.normal_()
    x = torch.randn(4, 12, dtype=dtype)
    want = x @ layer.dense_weight().T + layer.bias
    assert torch.allclose(layer(x), want, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)
    assert layer(x[0]).shape == (9,)
    # state_dict round trip into a layer built with another density, exact.
    other = LowRankSparseLinear(12, 9, 3, density=0.5, dtype=dtype)
    other.load_state_dict(layer.state_dict())
    for (k, a), (_, b) in zip(layer.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b) and a.dtype == b.dtype, k
    assert torch.equal(other(x), layer(x))
    # NumPy operator round trip.
    op = layer.to_operator()
    np.testing.assert_allclose(op(x.numpy()), layer(x).detach().numpy(), rtol=TOL[dtype] * 10,
                               atol=TOL[dtype] * 10)
    empty = LowRankSparseLinear(12, 9, 3, dtype=dtype, bias=False)
    assert empty.nnz == 0 and torch.allclose(empty(x), x @ empty.dense_weight().T,
                                             rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def test_low_rank_sparse_linear_gradients():
    torch.manual_seed(1)
    layer = LowRankSparseLinear(6, 5, 2, density=0.3, dtype=torch.float64)
    with torch.no_grad():
        layer.S_values.normal_()
    names = ("U", "V", "S_values", "bias")
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    inputs = (x, *(getattr(layer, k).detach().clone().requires_grad_() for k in names))

    def f(x, *params):  # the layer as a function of its input and every parameter
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(f, inputs)


def test_fit_linear_bad_input():
    lin, X, C = setup()
    with pytest.raises(TypeError, match="linear: expected a torch.nn.Linear"):
        fit_linear(torch.nn.Conv1d(2, 2, 1), "lowrank", rank=1)
    with pytest.raises(ValueError, match="method: expected one of"):
        fit_linear(lin, "svd", rank=1)
    with pytest.raises(ValueError, match="rank: give either ratio= or rank="):
        fit_linear(lin, "lowrank", rank=2, ratio=2.0)
    with pytest.raises(ValueError, match=r"input_gram: expected shape \(20, 20\)"):
        fit_linear(lin, "lowrank", rank=2, input_gram=C[:5, :5])
    with pytest.raises(ValueError, match="input_gram: contains NaN"):
        fit_linear(lin, "lowrank_sparse", rank=2, density=0.1, input_gram=C * float("nan"))
    with pytest.raises(ValueError, match="rank"):
        fit_linear(lin, "lowrank", rank=21)
    with pytest.raises(ValueError, match="a_shape, b_shape"):
        fit_linear(lin, "doped_kron", density=0.1)
    with pytest.raises(ValueError, match="density"):
        LowRankSparseLinear(4, 4, 2, density=2.0)
    with pytest.raises(TypeError, match="input: expected dtype"):
        LowRankSparseLinear(4, 4, 2, dtype=torch.float64)(torch.ones(4))
    with pytest.raises(ValueError, match="op: expected an operator"):
        LowRankSparseLinear(4, 4, 2).load_operator_(lpfast.LowRankSparse(np.ones((4, 1)), np.ones((1, 4))))
