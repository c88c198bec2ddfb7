"""The doped Kronecker product against lpfast.reference: dtypes x shapes x ranks x batches,
S in every accepted form, x layouts, out=, no mutation, a hypothesis property test, and
the SELL layout of the batch-1 path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import lpfast
from lpfast import DopedKronecker, doped_kp_matmul
from lpfast import reference as ref

from shared import DTYPES
from kron_cases import (BATCHES, EXTRAS, S_FORMS, SHAPES, X_LAYOUTS, assert_matches,
                        assert_unchanged, csr_parts_to_dense, dense_W, expected,
                        make_operands, random_csr, random_x, sell_case, snapshot)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


# -- matmul vs reference ---------------------------------------------------------------------

@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize(("a_shape", "b_shape"), SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_matches_reference(dtype, a_shape, b_shape, rank, batch, extras):
    ops = make_operands(a_shape, b_shape, rank, dtype, with_S="S" in extras,
                        with_bias="bias" in extras)
    x = random_x((batch, a_shape[1] * b_shape[1]), dtype)
    want = expected(x, **ops)
    assert_matches(doped_kp_matmul(x, **ops), want, dtype)
    assert_matches(DopedKronecker(**ops)(x), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_large_64x64_factors(dtype):
    ops = make_operands((64, 64), (64, 64), 2, dtype, with_S=True, with_bias=True,
                        density=0.001)
    x = random_x((33, 64 * 64), dtype)
    want = expected(x, **ops)
    assert_matches(doped_kp_matmul(x, **ops), want, dtype)
    assert_matches(DopedKronecker(**ops)(x), want, dtype)


@pytest.mark.parametrize("lead", [(), (2, 3), (1, 1, 4), (0,), (2, 0), (0, 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_batch_dims(dtype, lead):
    ops = make_operands((3, 5), (4, 2), 2, dtype, with_S=True, with_bias=True)
    x = random_x((*lead, 10), dtype)
    want = expected(x.reshape(-1, 10), **ops).reshape(*lead, 12)
    assert_matches(doped_kp_matmul(x, **ops), want, dtype)
    assert_matches(DopedKronecker(**ops)(x), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_zero_returns_empty(dtype):
    ops = make_operands((3, 5), (4, 2), 1, dtype, with_S=True, with_bias=True)
    x = np.zeros((0, 10), dtype=dtype)
    for y in (doped_kp_matmul(x, **ops), DopedKronecker(**ops)(x)):
        assert y.shape == (0, 12) and y.dtype == dtype


@pytest.mark.parametrize("batch", [1, 3, 17])
@pytest.mark.parametrize("form", list(S_FORMS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_S_forms(dtype, form, batch):
    ops = make_operands((4, 6), (5, 7), 2, dtype, with_S=True, with_bias=True, density=0.4)
    x = random_x((batch, 42), dtype)
    want = expected(x, **ops)
    nnz = ops["S"].nnz
    ops["S"] = S_FORMS[form](ops["S"])
    assert_matches(doped_kp_matmul(x, **ops), want, dtype)
    op = DopedKronecker(**ops)
    assert_matches(op(x), want, dtype)
    assert op.nnz == nnz


def _structured_S(kind, shape, rng):
    """(indptr, indices, data) with an unusual structure."""
    m, n = shape
    if kind == "empty_rows":  # every other row empty, the others dense
        counts = np.where(np.arange(m) % 2 == 1, n, 0)
        indices = np.concatenate([np.arange(n) for c in counts if c])
    elif kind == "one_row":  # all entries in one (middle) row
        counts = np.zeros(m, dtype=int)
        counts[m // 2] = n
        indices = np.arange(n)
    elif kind == "nnz0":
        counts = np.zeros(m, dtype=int)
        indices = np.zeros(0, dtype=int)
    elif kind == "duplicates":  # each row holds columns 0, 0, 3, 3, 3 and its own column
        counts = np.full(m, 6)
        indices = np.concatenate([[0, 0, 3, 3, 3, i % n] for i in range(m)])
    elif kind == "unsorted":  # every row lists all columns in a random order
        counts = np.full(m, n)
        indices = np.concatenate([rng.permutation(n) for _ in range(m)])
    else:
        raise AssertionError(kind)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, indices, rng.standard_normal(indices.size)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("batch", [1, 3, 17, 40])
@pytest.mark.parametrize("kind", ["empty_rows", "one_row", "nnz0", "duplicates", "unsorted"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_S_structures(dtype, kind, batch, index_dtype):
    rng = np.random.default_rng(3)
    ops = make_operands((3, 4), (5, 6), 2, dtype, with_bias=True)
    indptr, indices, data = _structured_S(kind, (15, 24), rng)
    S_dense = csr_parts_to_dense(indptr, indices, data, (15, 24))
    ops["S"] = (indptr.astype(index_dtype), indices.astype(index_dtype), data.astype(dtype))
    x = random_x((batch, 24), dtype)
    want = expected(x, ops["A"], ops["B"], S_dense.astype(dtype), ops["bias"])
    assert_matches(doped_kp_matmul(x, **ops), want, dtype)
    op = DopedKronecker(**ops)
    assert_matches(op(x), want, dtype)
    assert_matches(op.to_dense(), dense_W(ops["A"], ops["B"], S_dense), dtype)


@pytest.mark.parametrize("layout", list(X_LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_x_layouts_give_same_result(dtype, layout):
    ops = make_operands((3, 5), (4, 2), 2, dtype, with_S=True, with_bias=True)
    x = random_x((7, 10), dtype)
    xv = X_LAYOUTS[layout](x)
    if layout == "list" and dtype != np.float64:
        # A list of Python floats is float64 data: float32 operands refuse it (no silent cast).
        with pytest.raises(TypeError, match=r"^x: dtype float64 does not match"):
            DopedKronecker(**ops)(xv)
        with pytest.raises(TypeError, match=r"x is float64 but A is float32"):
            doped_kp_matmul(xv, **ops)
        return
    assert not (isinstance(xv, np.ndarray) and xv.flags.c_contiguous)
    want = expected(x, **ops)
    assert_matches(DopedKronecker(**ops)(xv), want, dtype)
    assert_matches(doped_kp_matmul(xv, **ops), want, dtype)


@pytest.mark.parametrize("int_dtype", [np.int8, np.int32, np.int64, np.uint8, np.bool_])
@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_x_is_converted(dtype, int_dtype):
    ops = make_operands((3, 5), (4, 2), 2, dtype, with_S=True, with_bias=True)
    xi = (np.arange(30).reshape(3, 10) % 5).astype(int_dtype)
    want = expected(xi.astype(np.float64), **ops)
    assert_matches(doped_kp_matmul(xi, **ops), want, dtype)
    assert_matches(DopedKronecker(**ops)(xi), want, dtype)


def test_integer_operands_compute_in_float64():
    A = np.arange(6).reshape(2, 3)
    B = np.arange(4).reshape(2, 2)
    x = np.arange(12).reshape(2, 6)
    y = doped_kp_matmul(x, A, B)
    assert y.dtype == np.float64
    assert np.array_equal(y, expected(x, A, B))


@pytest.mark.parametrize("lead", [(5,), (2, 3), (0,)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_parameter(dtype, lead):
    ops = make_operands((3, 5), (4, 2), 2, dtype, with_S=True, with_bias=True)
    x = random_x((*lead, 10), dtype)
    op = DopedKronecker(**ops)
    want = expected(x.reshape(-1, 10), **ops).reshape(*lead, 12)
    for call in (lambda out: doped_kp_matmul(x, **ops, out=out), lambda out: op(x, out=out)):
        out = np.full((*lead, 12), np.nan, dtype=dtype)  # every entry must be overwritten
        y = call(out)
        assert y is out
        assert_matches(out, want, dtype)


@pytest.mark.parametrize("form", ["csr_array", "tuple_int32", "tuple_int64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_not_modified(dtype, form):
    ops = make_operands((3, 5), (4, 2), 3, dtype, with_S=True, with_bias=True)
    ops["S"] = S_FORMS[form](ops["S"])
    x = random_x((17, 10), dtype)
    before = snapshot(x, *ops.values())
    doped_kp_matmul(x, **ops)
    op = DopedKronecker(**ops)
    op(x)
    op.T(random_x((4, 12), dtype))
    assert_unchanged(before, x, *ops.values())


# -- property test ---------------------------------------------------------------------------

@st.composite
def problems(draw):
    dims = [draw(st.integers(1, 6)) for _ in range(4)]
    rank = draw(st.integers(1, 3))
    return {
        "a_shape": tuple(dims[:2]),
        "b_shape": tuple(dims[2:]),
        "rank": rank,
        "squeeze": rank == 1 and draw(st.booleans()),  # pass 2-d factors for rank 1
        "batch": draw(st.integers(0, 9)),
        "density": draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]) | st.floats(0, 1)),
        "with_bias": draw(st.booleans()),
        "index_dtype": draw(st.sampled_from([np.int32, np.int64])),
        "dtype": draw(st.sampled_from(DTYPES)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=150, deadline=None)
@given(problems())
def test_property_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    (m1, n1), (m2, n2), R, dtype = p["a_shape"], p["b_shape"], p["rank"], p["dtype"]
    lead = () if p["squeeze"] else (R,)
    A = rng.standard_normal((*lead, m1, n1)).astype(dtype)
    B = rng.standard_normal((*lead, m2, n2)).astype(dtype)
    S = random_csr((m1 * m2, n1 * n2), p["density"], dtype, rng)
    S_tuple = (S.indptr.astype(p["index_dtype"]), S.indices.astype(p["index_dtype"]), S.data)
    bias = rng.standard_normal(m1 * m2).astype(dtype) if p["with_bias"] else None
    x = rng.standard_normal((p["batch"], n1 * n2)).astype(dtype)
    want = expected(x, A, B, S, bias)
    assert_matches(doped_kp_matmul(x, A, B, S_tuple, bias), want, dtype)
    op = DopedKronecker(A, B, S_tuple, bias)
    assert_matches(op(x), want, dtype)
    assert op.nnz == S.nnz
    assert op.n_params == R * (m1 * n1 + m2 * n2) + S.nnz + (0 if bias is None else m1 * m2)


# -- the SELL layout of the batch-1 path --------------------------------------------------------
# One row of x goes through S in the SELL-16 layout (sell.hpp), batches through CSR: both
# must agree with the reference on every structure the layout pads or reorders.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (1, 1, 1, 1), (4, 4, 4, 4), (5, 2, 7, 3)],
                         ids=str)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6])
def test_sell_batch1_matches_reference_and_batches(shape, density, dtype):
    A, B, S, rng = sell_case(*shape, density, dtype, seed=7, rank=2)
    bias = rng.standard_normal(shape[0] * shape[2]).astype(dtype)
    op = lpfast.DopedKronecker(A, B, S, bias)
    x = rng.standard_normal((3, shape[1] * shape[3])).astype(dtype)
    want = ref.doped_kp_matmul(x, A, B, S, bias)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    rows = np.stack([op(x[i:i + 1])[0] for i in range(3)])  # SELL, one row at a time
    np.testing.assert_allclose(rows, want, rtol=rtol, atol=rtol * np.abs(want).max())
    np.testing.assert_allclose(op(x), want, rtol=rtol, atol=rtol * np.abs(want).max())  # CSR


def test_sell_uneven_rows_and_empty_rows():
    # Rows of very different lengths (and empty ones) in one sorting window; 37 rows is not
    # a multiple of the slice height 16.
    rng = np.random.default_rng(3)
    m, n = 37, 50
    dense = np.zeros((m, n))
    for i in range(m):
        k = (i * 7) % 23 if i % 5 else 0
        dense[i, rng.choice(n, k, replace=False)] = rng.standard_normal(k)
    S = sp.csr_matrix(dense)
    A, B = np.ones((37, 5)), np.ones((1, 10))
    op = lpfast.DopedKronecker(A, B, S)
    x = rng.standard_normal((1, n))
    np.testing.assert_allclose(op(x), ref.doped_kp_matmul(x, A, B, S), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sell_wide_matrix_uses_int32_columns(dtype):
    # More than 65536 columns: the layout cannot use 16-bit column indices.
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((8, 300)).astype(dtype), rng.standard_normal((5, 300)).astype(dtype)
    S = sp.random(40, 90000, density=0.001, format="csr", random_state=5).astype(dtype)
    op = lpfast.DopedKronecker(A, B, S)
    assert op._sell[3].dtype == np.int32  # noqa: SLF001 - checking the private layout
    x = rng.standard_normal((1, 90000)).astype(dtype)
    tol = 1e-11 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(op(x), ref.doped_kp_matmul(x, A, B, S), rtol=tol, atol=tol)
    narrow = lpfast.DopedKronecker(A[:2, :10], B[:2, :10], sp.random(
        4, 100, density=0.1, format="csr", random_state=1).astype(dtype))
    assert narrow._sell[3].dtype == np.uint16  # noqa: SLF001


@pytest.mark.parametrize("batch", [1, 5])
def test_float32_long_factor_rows_use_the_blocked_gemm_fallback(batch):
    # n2 > 1024: B^T's panels no longer fit L2 and the kernel hands that GEMM to Eigen.
    A, B, S, rng = sell_case(3, 2, 4, 1100, 0.01, np.float32, seed=9, rank=2)
    x = rng.standard_normal((batch, 2200)).astype(np.float32)
    expected = ref.doped_kp_matmul(x.astype(np.float64), A.astype(np.float64),
                                   B.astype(np.float64), S.astype(np.float64))
    for y in (lpfast.DopedKronecker(A, B, S)(x), doped_kp_matmul(x, A, B, S)):
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-3)


def test_check_finite_attribute_governs_every_path():
    A, B, S, rng = sell_case(3, 5, 4, 6, 0.2, np.float64, seed=6)
    op = lpfast.DopedKronecker(A, B, S)
    x = rng.standard_normal((2, 30))
    x[:, 7] = np.inf
    op.check_finite = False
    assert not np.isfinite(op(x[:1])).all() and not np.isfinite(op(x)).all()
    op.check_finite = True
    for rows in (x[:1], x):
        with pytest.raises(ValueError, match=r"^x: contains NaN or Inf"):
            op(rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pickle_round_trip_rebuilds_the_serving_kernel(dtype):
    import pickle

    A, B, S, rng = sell_case(3, 5, 4, 6, 0.2, dtype, seed=4, rank=2)
    op = lpfast.DopedKronecker(A, B, S, rng.standard_normal(12).astype(dtype), check_finite=False)
    op.fit_info["note"] = "kept"
    back = pickle.loads(pickle.dumps(op))
    x = rng.standard_normal((1, 30)).astype(dtype)
    np.testing.assert_array_equal(back(x), op(x))
    np.testing.assert_array_equal(back(np.vstack([x, x])), op(np.vstack([x, x])))
    assert back.check_finite is False and back.fit_info == {"note": "kept"}
    x[0, 3] = np.nan
    assert np.isnan(back(x)).any()  # check_finite=False survived


def test_sell_result_independent_of_threads():
    A, B, S, rng = sell_case(64, 64, 64, 64, 0.01, np.float32, seed=11)
    op = lpfast.DopedKronecker(A, B, S)
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    try:
        lpfast.set_num_threads(1)
        one = op(x)
        lpfast.set_num_threads(2)
        two = op(x)
    finally:
        lpfast.set_num_threads(None)
    np.testing.assert_array_equal(one, two)


def test_out_overlapping_x_is_refused():
    # A square operator could be asked to write its result over its input: the kernels read
    # x while they write out, so this must fail loudly rather than return garbage.
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    op = DopedKronecker(A, B)
    x = rng.standard_normal((5, 12))
    with pytest.raises(ValueError, match=r"^out: must not overlap x"):
        op(x, out=x)
    with pytest.raises(ValueError, match=r"^out: must not overlap x"):
        doped_kp_matmul(x, A, B, out=x)
    out = np.empty_like(x)
    np.testing.assert_allclose(op(x, out=out), x @ op.to_dense().T)


@pytest.mark.parametrize("target", ["A", "B", "S.indptr", "S.indices", "S.data", "bias"])
def test_out_overlapping_any_input_is_refused(target):
    # Only x used to be compared with out: out over A overwrote A mid-product (a wrong
    # result), and out over S's index arrays crashed the process.
    rng = np.random.default_rng(0)
    S = sp.random(12, 20, density=0.2, format="csr", random_state=1, dtype=np.float64)
    inputs = {"A": rng.standard_normal((3, 4)), "B": rng.standard_normal((4, 5)),
              "S.indptr": S.indptr.astype(np.int64), "S.indices": S.indices.astype(np.int64),
              "S.data": S.data.copy(), "bias": rng.standard_normal(12)}  # W is 12 x 20
    # The target's values at the start of a buffer that out (1 x 12 float64) also covers.
    arr = inputs[target]
    buf = np.zeros(max(arr.size, 12), dtype=arr.dtype)
    buf[:arr.size] = arr.ravel()
    inputs[target] = buf[:arr.size].reshape(arr.shape)
    out = buf.view(np.float64)[:12].reshape(1, 12)
    before = {k: v.copy() for k, v in inputs.items()}
    csr = (inputs["S.indptr"], inputs["S.indices"], inputs["S.data"])
    with pytest.raises(ValueError, match=rf"^out: must not overlap {target}"):
        doped_kp_matmul(rng.standard_normal((1, 20)), inputs["A"], inputs["B"], csr,
                        inputs["bias"], out=out)
    for k, v in before.items():
        np.testing.assert_array_equal(inputs[k], v)  # nothing written


def test_out_overlap_audit_reproducer():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    x = rng.standard_normal((1, 20))
    Ac = A.copy()
    with pytest.raises(ValueError, match=r"^out: must not overlap A"):
        doped_kp_matmul(x, Ac, B, out=Ac.reshape(-1)[:12].reshape(1, 12))
    np.testing.assert_array_equal(Ac, A)
