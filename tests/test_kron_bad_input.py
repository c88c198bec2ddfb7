"""Bad input to the doped Kronecker API: every rejection names its argument."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import lpfast
from lpfast import DopedKronecker, doped_kp_fit, doped_kp_matmul, nearest_kronecker

from shared import DTYPES
from kron_cases import assert_unchanged, make_operands, sell_case, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


# -- bad input -------------------------------------------------------------------------------

# A valid small problem: A (2, 3), B (3, 2) -> W (6, 6).
_A = np.arange(1.0, 7.0).reshape(2, 3)
_B = np.arange(1.0, 7.0).reshape(3, 2) / 7
_S = sp.csr_array(np.eye(6))
_BIAS = np.ones(6)
_X = np.ones((4, 6))


def _csr(indptr, indices, data=None):
    indices = np.asarray(indices)
    return (np.asarray(indptr), indices, np.ones(indices.size) if data is None else np.asarray(data))


def _with(where, value):
    a = np.array(where, dtype=np.float64)
    a.flat[1] = value
    return a


# Bad operator parameters: each is tried on doped_kp_matmul(_X, ...) and DopedKronecker(...).
BAD_PARAMS = [
    ("A_1d", dict(A=np.ones(3)), ValueError, r"^A: expected a 2-d or 3-d array"),
    ("A_4d", dict(A=np.ones((1, 1, 2, 3))), ValueError, r"^A: expected a 2-d or 3-d array"),
    ("B_1d", dict(B=np.ones(3)), ValueError, r"^B: expected a 2-d or 3-d array"),
    ("rank_mismatch", dict(A=np.ones((2, 2, 3)), B=np.ones((3, 3, 2))), ValueError,
     r"^A and B: Kronecker ranks differ"),
    ("rank_zero", dict(A=np.ones((0, 2, 3)), B=np.ones((0, 3, 2))), ValueError, r"^A, B: .*rank >= 1"),
    ("bias_length", dict(bias=np.ones(5)), ValueError, r"^bias: expected shape \(6,\)"),
    ("bias_2d", dict(bias=np.ones((1, 6))), ValueError, r"^bias: expected a 1-d"),
    ("S_shape", dict(S=sp.csr_array(np.eye(6, 7))), ValueError, r"^S: expected shape \(6, 6\)"),
    ("S_dense", dict(S=np.eye(6)), TypeError, r"^S: expected a SciPy CSR"),
    ("S_tuple_len", dict(S=(np.arange(7), np.arange(6))), TypeError, r"^S: a CSR tuple"),
    ("S_indptr_float", dict(S=(np.arange(7.0), np.arange(6), np.ones(6))), TypeError, r"^S\.indptr"),
    ("S_indices_2d", dict(S=(np.arange(7), np.zeros((6, 1), int), np.ones(6))), ValueError, r"^S\.indices"),
    ("indptr_non_monotone", dict(S=_csr([0, 2, 1, 3, 4, 5, 6], np.arange(6))), ValueError,
     r"^S: indptr is not non-decreasing"),
    ("indptr_too_short", dict(S=_csr([0, 1, 2, 3, 4, 6], np.arange(6))), ValueError,
     r"^S: indptr has length 6, expected rows \+ 1 = 7"),
    ("indptr_too_long", dict(S=_csr([0, 1, 2, 3, 4, 5, 6, 6], np.arange(6))), ValueError,
     r"^S: indptr has length 8"),
    ("indptr_empty", dict(S=_csr(np.zeros(0, int), np.zeros(0, int))), ValueError, r"^S: indptr"),
    ("indptr0_nonzero", dict(S=_csr([1, 1, 2, 3, 4, 5, 6], np.arange(6))), ValueError,
     r"^S: indptr\[0\] must be 0"),
    ("index_negative", dict(S=_csr(np.arange(7), [0, 1, -1, 3, 4, 5])), ValueError,
     r"^S: column index -1 at position 2 is outside \[0, 6\)"),
    ("index_too_large", dict(S=_csr(np.arange(7), [0, 1, 2, 3, 4, 6])), ValueError,
     r"^S: column index 6 at position 5"),
    ("index_huge_int64", dict(S=_csr(np.arange(7), [0, 1, 2, 3, 4, 2**40])), ValueError,
     r"^S: column index"),
    ("index_uint64_wraps", dict(S=_csr(np.arange(7, dtype=np.uint64),
                                        np.array([0, 1, 2, 3, 4, 2**64 - 1], dtype=np.uint64))),
     ValueError, r"^S: column index"),
    ("nnz_mismatch", dict(S=_csr([0, 1, 2, 3, 4, 5, 5], np.arange(6))), ValueError,
     r"^S: indptr\[-1\] = 5 but indices/data have 6 entries"),
    ("data_length", dict(S=_csr(np.arange(7), np.arange(6), np.ones(5))), ValueError,
     r"^S: data has 5 entries but indices has 6"),
    ("data_2d", dict(S=_csr(np.arange(7), np.arange(6), np.ones((6, 1)))), ValueError, r"^S\.data"),
    ("A_nan", dict(A=_with(_A, np.nan)), ValueError, r"^A: contains NaN or Inf"),
    ("B_inf", dict(B=_with(_B, np.inf)), ValueError, r"^B: contains NaN or Inf"),
    ("S_data_nan", dict(S=_csr(np.arange(7), np.arange(6), _with(np.ones(6), np.nan))), ValueError,
     r"^S\.data: contains NaN or Inf"),
    ("S_data_neg_inf", dict(S=sp.csr_array(_with(np.eye(6), -np.inf))), ValueError,
     r"^S\.data: contains NaN or Inf"),
    ("bias_nan", dict(bias=_with(_BIAS, np.nan)), ValueError, r"^bias: contains NaN or Inf"),
    ("A_complex", dict(A=_A.astype(complex)), TypeError, r"^A: expected a real floating-point"),
    ("B_complex", dict(B=_B.astype(np.complex64)), TypeError, r"^B: expected a real floating-point"),
    ("S_complex", dict(S=sp.csr_array(np.eye(6, dtype=complex))), TypeError, r"^S\.data: expected a real"),
    ("bias_complex", dict(bias=_BIAS.astype(complex)), TypeError, r"^bias: expected a real"),
    ("A_object", dict(A=_A.astype(object)), TypeError, r"^A: expected a real floating-point"),
    ("B_strings", dict(B=_B.astype(str)), TypeError, r"^B: expected a real floating-point"),
    ("bias_strings", dict(bias=["a"] * 6), TypeError, r"^bias: expected a real floating-point"),
    # The function names x first (it is the first float64 argument), the class names A.
    ("A32_B64", dict(A=_A.astype(np.float32)), TypeError, r"^mismatched dtypes: .*\bA is float32"),
    ("S32_A64", dict(S=sp.csr_array(np.eye(6, dtype=np.float32))), TypeError,
     r"^mismatched dtypes: .*S\.data is float32"),
    ("bias32_A64", dict(bias=_BIAS.astype(np.float32)), TypeError, r"mismatched dtypes: .*bias is float32"),
]


def _params(overrides):
    return {"A": _A, "B": _B, "S": _S, "bias": _BIAS, **overrides}


@pytest.mark.parametrize(("overrides", "exc", "match"),
                         [pytest.param(o, e, m, id=i) for i, o, e, m in BAD_PARAMS])
@pytest.mark.parametrize("api", ["function", "class"])
def test_bad_parameters(api, overrides, exc, match):
    params = _params(overrides)
    before = snapshot(*params.values())
    with pytest.raises(exc, match=match):
        if api == "function":
            doped_kp_matmul(_X, **params)
        else:
            DopedKronecker(**params)
    assert_unchanged(before, *params.values())


NON_FINITE = [
    pytest.param(dict(A=_with(_A, np.nan)), id="A_nan"),
    pytest.param(dict(B=_with(_B, -np.inf)), id="B_inf"),
    pytest.param(dict(S=sp.csr_array(_with(np.eye(6), np.nan))), id="S_nan"),
    pytest.param(dict(bias=_with(_BIAS, np.inf)), id="bias_inf"),
]


@pytest.mark.parametrize("overrides", NON_FINITE)
def test_check_finite_false_lets_non_finite_through(overrides):
    params = _params(overrides)
    y1 = doped_kp_matmul(_X, **params, check_finite=False)
    y2 = DopedKronecker(**params, check_finite=False)(_X)
    for y in (y1, y2):
        assert y.shape == (4, 6)
        assert not np.isfinite(y).all()


BAD_X = [
    ("x_last_dim", np.ones((4, 5)), ValueError, r"^x: expected shape \(\.\.\., 6\), got \(4, 5\)"),
    ("x_scalar", np.float64(1.0), ValueError, r"^x: expected shape"),
    ("x_nan", _with(_X, np.nan), ValueError, r"^x: contains NaN or Inf"),
    ("x_inf", _with(_X, -np.inf), ValueError, r"^x: contains NaN or Inf"),
    ("x_complex", _X.astype(complex), TypeError, r"x.*(complex|real floating-point)"),
    ("x_float32", _X.astype(np.float32), TypeError, r"x.*float32"),
    ("x_object", _X.astype(object), TypeError, r"^x: expected a real floating-point"),
    ("x_strings", _X.astype(str), TypeError, r"^x: expected a real floating-point"),
]


@pytest.mark.parametrize(("x", "exc", "match"), [pytest.param(x, e, m, id=i) for i, x, e, m in BAD_X])
@pytest.mark.parametrize("api", ["function", "class"])
def test_bad_x(api, x, exc, match):
    with pytest.raises(exc, match=match):
        if api == "function":
            doped_kp_matmul(x, **_params({}))
        else:
            DopedKronecker(**_params({}))(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float64_x_with_float32_operator(dtype):
    other = np.float64 if dtype == np.float32 else np.float32
    op = DopedKronecker(**make_operands((2, 3), (3, 2), 1, dtype, with_S=True))
    with pytest.raises(TypeError, match=rf"^x: dtype {np.dtype(other)} does not match"):
        op(_X.astype(other))


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_check_finite_false_accepts_non_finite_x(bad):
    x = _with(_X, float(bad))
    for y in (doped_kp_matmul(x, **_params({}), check_finite=False),
              DopedKronecker(**_params({}), check_finite=False)(x)):
        assert y.shape == (4, 6)
        assert not np.isfinite(y[0]).all() and np.isfinite(y[1:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", [0, 16, 4094])  # the vector body and the scalar tail
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_found_anywhere_at_batch_1_and_batched(dtype, where, bad):
    # The check runs in the kernel binding: every entry of every row must be seen, on the
    # batch-1 (SELL) path, the batched path, and for a strided x that is copied first.
    A, B, S, rng = sell_case(2, 63, 3, 65, 0.05, dtype, seed=3)
    op = lpfast.DopedKronecker(A, B, S)
    one, batch, wide = (rng.standard_normal(shape).astype(dtype) for shape in
                        (4095, (3, 4095), (2, 8190)))
    one[where] = batch[-1, where] = wide[-1, 2 * where] = bad
    for x in (one, batch, wide[:, ::2]):
        with pytest.raises(ValueError, match=r"^x: contains NaN or Inf"):
            op(x)
        with pytest.raises(ValueError, match=r"^x: contains NaN or Inf"):
            doped_kp_matmul(x, A, B, S)
        assert not np.isfinite(lpfast.DopedKronecker(A, B, S, check_finite=False)(x)).all()


BAD_OUT = [
    ("shape", np.empty((4, 5)), ValueError, r"^out: expected shape \(4, 6\), got \(4, 5\)"),
    ("lead_shape", np.empty((2, 2, 6)), ValueError, r"^out: expected shape"),
    ("dtype", np.empty((4, 6), np.float32), TypeError, r"^out: expected a C-contiguous numpy array of dtype float64"),
    ("fortran", np.empty((4, 6), order="F"), TypeError, r"^out: expected a C-contiguous"),
    ("strided", np.empty((4, 12))[:, ::2], TypeError, r"^out: expected a C-contiguous"),
    ("list", [[0.0] * 6] * 4, TypeError, r"^out: expected a C-contiguous numpy array"),
    ("read_only", np.lib.stride_tricks.as_strided(np.empty((4, 6)), writeable=False), ValueError,
     r"^out: array is read-only"),
]


@pytest.mark.parametrize(("out", "exc", "match"), [pytest.param(o, e, m, id=i) for i, o, e, m in BAD_OUT])
@pytest.mark.parametrize("api", ["function", "class"])
def test_bad_out(api, out, exc, match):
    with pytest.raises(exc, match=match):
        if api == "function":
            doped_kp_matmul(_X, **_params({}), out=out)
        else:
            DopedKronecker(**_params({}))(_X, out=out)


_W = np.arange(72.0).reshape(6, 12)
BAD_FIT = [
    ("W_1d", dict(W=np.ones(6)), ValueError, r"^W: expected a 2-d array"),
    ("W_nan", dict(W=_with(_W, np.nan)), ValueError, r"^W: contains NaN or Inf"),
    ("W_complex", dict(W=_W.astype(complex)), TypeError, r"^W: expected a real"),
    ("shapes_do_not_factor", dict(a_shape=(2, 3), b_shape=(3, 3)), ValueError,
     r"a_shape=\(2, 3\) and b_shape=\(3, 3\) do not factor W's shape \(6, 12\)"),
    ("a_shape_not_pair", dict(a_shape=6), TypeError, r"^a_shape: expected a pair"),
    ("b_shape_negative", dict(b_shape=(-3, 4)), ValueError, r"^b_shape\[0\]"),
    ("rank_0", dict(rank=0), ValueError, r"^rank: expected an integer in \[1, 6\], got 0"),
    ("rank_too_big", dict(rank=7), ValueError, r"^rank: expected an integer in \[1, 6\], got 7"),
    ("rank_float", dict(rank=1.5), TypeError, r"^rank: expected an integer"),
]
BAD_FIT_ONLY = [
    ("density_negative", dict(density=-0.1), ValueError, r"^density: expected a value in \[0.0, 1.0\]"),
    ("density_above_one", dict(density=1.5), ValueError, r"^density: expected a value in \[0.0, 1.0\]"),
    ("density_nan", dict(density=float("nan")), ValueError, r"^density: expected a finite number"),
    ("density_string", dict(density="0.1"), TypeError, r"^density: expected a real number"),
    ("n_iter_negative", dict(n_iter=-1), ValueError, r"^n_iter"),
    ("tol_negative", dict(tol=-1.0), ValueError, r"^tol"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"),
                         [pytest.param(k, e, m, id=i) for i, k, e, m in BAD_FIT])
@pytest.mark.parametrize("api", ["nearest_kronecker", "doped_kp_fit"])
def test_bad_fit_arguments(api, kwargs, exc, match):
    args = {"W": _W, "a_shape": (2, 3), "b_shape": (3, 4), "rank": 1, **kwargs}
    with pytest.raises(exc, match=match):
        if api == "nearest_kronecker":
            nearest_kronecker(**args)
        else:
            doped_kp_fit(**args, density=0.1)


@pytest.mark.parametrize(("kwargs", "exc", "match"),
                         [pytest.param(k, e, m, id=i) for i, k, e, m in BAD_FIT_ONLY])
def test_bad_doped_kp_fit_arguments(kwargs, exc, match):
    args = {"W": _W, "a_shape": (2, 3), "b_shape": (3, 4), "density": 0.1, **kwargs}
    with pytest.raises(exc, match=match):
        doped_kp_fit(**args)


def test_torch_coo_tensor_rejected():
    torch = pytest.importorskip("torch")
    S = torch.eye(6, dtype=torch.float64).to_sparse()
    with pytest.raises(TypeError, match=r"^S: torch sparse tensor must have layout torch.sparse_csr"):
        doped_kp_matmul(_X, _A, _B, S)


@pytest.mark.parametrize(("a_shape", "b_shape"), [((0, 3), (2, 2)), ((3, 0), (2, 2))])
def test_zero_size_factor_dims(a_shape, b_shape):
    A, B = np.ones(a_shape), np.ones(b_shape)
    m, n = a_shape[0] * b_shape[0], a_shape[1] * b_shape[1]
    x = np.ones((4, n))
    try:
        y = doped_kp_matmul(x, A, B)
    except ValueError as e:  # rejecting is fine too, if the message names the argument
        assert str(e).startswith(("A", "B", "x")), str(e)
    else:
        assert np.array_equal(y, np.zeros((4, m)))


# -- from_dict and empty matrices: errors naming the argument (issue 18) ----------------------

_FULL_STATE = DopedKronecker(_A, _B, _S, _BIAS).to_dict()


@pytest.mark.parametrize(("d", "exc", "match"), [
    pytest.param(None, TypeError, r"^d: expected the dict DopedKronecker\.to_dict\(\) returns, "
                 r"got NoneType", id="none"),
    pytest.param([("A", _A)], TypeError, r"^d: expected the dict", id="list"),
    pytest.param({"B": _B}, ValueError, r"^d: missing key 'A'", id="no_A"),
    pytest.param({k: v for k, v in _FULL_STATE.items() if k != "S_indices"}, ValueError,
                 r"^d: has 'S_indptr', 'S_data' but not 'S_indices'", id="no_S_indices"),
    pytest.param({k: v for k, v in _FULL_STATE.items() if k != "S_data"}, ValueError,
                 r"^d: has 'S_indptr', 'S_indices' but not 'S_data'", id="no_S_data"),
])
def test_from_dict_bad_state(d, exc, match):
    with pytest.raises(exc, match=match):
        DopedKronecker.from_dict(d)


@pytest.mark.parametrize("shape", [(0, 6), (6, 0), (0, 0)])
@pytest.mark.parametrize("api", ["nearest_kronecker", "doped_kp_fit"])
def test_fit_refuses_an_empty_W(api, shape):
    # Was an argmax of an empty sequence from deep inside the fit.
    with pytest.raises(ValueError, match=r"^W: expected an \(n, d\) matrix with n >= 1"):
        if api == "nearest_kronecker":
            nearest_kronecker(np.ones(shape), (1, 1), shape)
        else:
            doped_kp_fit(np.ones(shape), density=0.1)
