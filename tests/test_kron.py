"""Doped Kronecker products (lpfast.kron) against the pure-NumPy ground truth in lpfast.reference.

Layout:
  helpers                      random operands, tolerant comparison, the fit baseline
  matmul vs reference          dtype x shape x rank x batch x (S, bias), leading batch dims
  S in every accepted form     SciPy / tuple / torch, odd CSR structures
  x layouts, out=, no mutation
  DopedKronecker object        structure, to_dense, to_dict round trip, .T, .S, immutability
  nearest_kronecker, doped_kp_fit
  bad input                    every rejection names its argument
  threads                      set/get_num_threads, concurrent calls, 1 vs 2 threads
  property test                hypothesis over random small problems
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import lpfast
from lpfast import DopedKronecker, doped_kp_fit, doped_kp_matmul, nearest_kronecker
from lpfast import reference as ref

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

DTYPES = [np.float32, np.float64]
# Error allowed relative to max|y| of the float64 reference.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
BATCHES = [1, 2, 5, 17, 33, 130]  # 1-wide, 4-, 8-, 16-, 32-wide and several 32-wide blocks
SHAPES = [
    pytest.param((1, 1), (1, 1), id="1x1(x)1x1"),
    pytest.param((1, 1), (3, 4), id="1x1(x)3x4"),
    pytest.param((3, 5), (4, 2), id="3x5(x)4x2"),
    pytest.param((4, 4), (4, 4), id="4x4(x)4x4"),
    pytest.param((8, 12), (16, 10), id="8x12(x)16x10"),  # enough work for 2 threads at batch 130
]
EXTRAS = ["plain", "S", "bias", "S+bias"]


# -- helpers ---------------------------------------------------------------------------------

def random_csr(shape, density, dtype, rng) -> sp.csr_array:
    """A SciPy CSR array with about density * size entries (int32 indices)."""
    mask = rng.random(shape) < density
    dense = np.where(mask, rng.standard_normal(shape), 0.0).astype(dtype)
    return sp.csr_array(dense)


def make_operands(a_shape, b_shape, rank, dtype, *, with_S=False, with_bias=False,
                  density=0.25, seed=0) -> dict:
    """Random A, B (2-d for rank 1, else 3-d), S (csr_array) and bias of one dtype."""
    rng = np.random.default_rng(seed)
    lead = () if rank == 1 else (rank,)
    m, n = a_shape[0] * b_shape[0], a_shape[1] * b_shape[1]
    return {
        "A": rng.standard_normal((*lead, *a_shape)).astype(dtype),
        "B": rng.standard_normal((*lead, *b_shape)).astype(dtype),
        "S": random_csr((m, n), density, dtype, rng) if with_S else None,
        "bias": rng.standard_normal(m).astype(dtype) if with_bias else None,
    }


def random_x(shape, dtype, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def csr_parts_to_dense(indptr, indices, data, shape) -> np.ndarray:
    """Dense float64 matrix of a CSR triple; duplicates add up (np.add.at)."""
    dense = np.zeros(shape)
    rows = np.repeat(np.arange(shape[0]), np.diff(np.asarray(indptr)))
    np.add.at(dense, (rows, np.asarray(indices)), np.asarray(data, dtype=np.float64))
    return dense


def expected(x, A, B, S=None, bias=None) -> np.ndarray:
    """The reference result, computed in float64 from the same values (S: SciPy or dense)."""
    def f64(a):
        return None if a is None else np.asarray(a, dtype=np.float64)

    S = S.astype(np.float64) if sp.issparse(S) else f64(S)
    return ref.doped_kp_matmul(f64(x), f64(A), f64(B), S, f64(bias))


def dense_W(A, B, S=None) -> np.ndarray:
    """The reference W = sum_r kron(A[r], B[r]) + S in float64 (S: SciPy or dense)."""
    S = S.astype(np.float64) if sp.issparse(S) else S
    return ref.kron_dense(np.asarray(A, np.float64), np.asarray(B, np.float64), S)


def assert_matches(got, want, dtype) -> None:
    """Same shape and dtype; max error <= RTOL[dtype] * max|want|."""
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray)
    assert got.dtype == dtype
    assert got.shape == want.shape
    scale = float(np.abs(want).max(initial=0.0))
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL[dtype] * scale + np.finfo(dtype).tiny)


def relative_error(W, approx) -> float:
    W = np.asarray(W, dtype=np.float64)
    return float(np.linalg.norm(W - approx) / np.linalg.norm(W))


def baseline_error(W, a_shape, b_shape, rank, nnz) -> float:
    """Error of nearest_kronecker + the nnz largest-|residual| entries as doping (float64)."""
    W = np.asarray(W, dtype=np.float64)
    A, B = ref.nearest_kronecker(W, a_shape, b_shape, rank)
    resid = np.sort(np.abs(W - ref.kron_dense(A, B)).ravel())
    return float(np.linalg.norm(resid[: resid.size - nnz]) / np.linalg.norm(W))


def snapshot(*arrays) -> list:
    """Copies of every array reachable from the arguments (SciPy sparse: its three arrays)."""
    out = []
    for a in arrays:
        if a is None:
            continue
        if sp.issparse(a):
            out.extend(np.array(p, copy=True) for p in (a.indptr, a.indices, a.data))
        elif isinstance(a, tuple):
            out.extend(snapshot(*a))
        else:
            out.append(np.array(a, copy=True))
    return out


def assert_unchanged(before, *arrays) -> None:
    after = snapshot(*arrays)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def aligned_empty(shape, dtype, offset) -> np.ndarray:
    """An uninitialized C-contiguous array starting ``offset`` bytes past a 64-byte boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + 128, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def call_fixed(op, x) -> np.ndarray:
    """op(x) into a 64-byte-aligned out: bit-comparable across calls for the same x object.

    Needed because small problems round differently with the out buffer's alignment
    (see test_result_independent_of_buffer_alignment).
    """
    return op(x, out=aligned_empty((*np.shape(x)[:-1], op.shape[0]), op.dtype, 0))


@pytest.fixture(autouse=True)
def default_threads():
    """Every test starts and ends with the default thread setting."""
    lpfast.set_num_threads(None)
    yield
    lpfast.set_num_threads(None)


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


# -- S in every accepted form ----------------------------------------------------------------

def _torch_csr(S):
    torch = pytest.importorskip("torch")
    return torch.sparse_csr_tensor(torch.from_numpy(S.indptr.astype(np.int64)),
                                   torch.from_numpy(S.indices.astype(np.int64)),
                                   torch.from_numpy(S.data.copy()), size=S.shape,
                                   check_invariants=True)


S_FORMS = {
    "csr_matrix": sp.csr_matrix,
    "csr_array": sp.csr_array,
    "csc_matrix": sp.csc_matrix,
    "coo_array": sp.coo_array,
    "tuple_int32": lambda S: (S.indptr.astype(np.int32), S.indices.astype(np.int32), S.data),
    "tuple_int64": lambda S: (S.indptr.astype(np.int64), S.indices.astype(np.int64), S.data),
    "tuple_mixed": lambda S: (S.indptr.astype(np.int32), S.indices.astype(np.int64), S.data),
    "tuple_uint16": lambda S: (S.indptr.astype(np.uint16), S.indices.astype(np.uint16), S.data),
    "torch_csr": _torch_csr,
}


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


# -- x layouts, out=, no mutation ------------------------------------------------------------

X_LAYOUTS = {
    "strided": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "fortran": np.asfortranarray,
    "transposed_view": lambda x: np.ascontiguousarray(x.T).T,
    "negative_strides": lambda x: x[::-1].copy()[::-1],
    "list": lambda x: x.tolist(),
}


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


def test_fit_does_not_modify_W():
    W = random_x((12, 20), np.float64)
    before = W.copy()
    nearest_kronecker(W, (3, 4), (4, 5), rank=2)
    doped_kp_fit(W, (3, 4), (4, 5), density=0.1, rank=2)
    assert np.array_equal(W, before)


# -- the DopedKronecker object ---------------------------------------------------------------

@pytest.mark.parametrize(("with_S", "with_bias"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_structure_properties(dtype, rank, with_S, with_bias):
    ops = make_operands((3, 5), (4, 2), rank, dtype, with_S=with_S, with_bias=with_bias)
    op = DopedKronecker(**ops)
    nnz = 0 if ops["S"] is None else ops["S"].nnz
    n_params = rank * (15 + 8) + nnz + (12 if with_bias else 0)
    assert op.shape == (12, 10)
    assert op.rank == rank
    assert op.a_shape == (3, 5) and op.b_shape == (4, 2)
    assert op.A.shape == (rank, 3, 5) and op.B.shape == (rank, 4, 2)
    assert op.dtype == np.dtype(dtype)
    assert op.nnz == nnz
    assert op.n_params == n_params
    assert op.compression == pytest.approx((120 + (12 if with_bias else 0)) / n_params)
    assert op.nbytes >= n_params * np.dtype(dtype).itemsize
    assert "DopedKronecker(shape=(12, 10)" in repr(op)
    assert_matches(op.to_dense(), dense_W(ops["A"], ops["B"], ops["S"]), dtype)
    if with_S:
        assert sp.issparse(op.S) and op.S.format == "csr" and op.S.shape == (12, 10)
        assert np.array_equal(op.S.toarray(), ops["S"].toarray())
    else:
        assert op.S is None


@pytest.mark.parametrize(("with_S", "with_bias"), [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dict_round_trip_is_bit_exact(dtype, with_S, with_bias):
    ops = make_operands((3, 5), (4, 2), 2, dtype, with_S=with_S, with_bias=with_bias)
    op = DopedKronecker(**ops)
    d = op.to_dict()
    assert all(isinstance(v, np.ndarray) for v in d.values())
    assert ("S_data" in d) == with_S and ("bias" in d) == with_bias
    op2 = DopedKronecker.from_dict(d)
    d2 = op2.to_dict()
    assert d.keys() == d2.keys()
    for key in d:
        assert d[key].dtype == d2[key].dtype and np.array_equal(d[key], d2[key]), key
    x = random_x((9, 10), dtype)
    y = call_fixed(op, x)
    assert np.array_equal(call_fixed(op2, x), y)
    # The dict is a copy: editing it does not touch either operator.
    d["A"][...] = 0
    assert np.array_equal(call_fixed(op, x), y) and np.array_equal(call_fixed(op2, x), y)


def test_from_dict_missing_key():
    with pytest.raises(ValueError, match="d: missing key 'B'"):
        DopedKronecker.from_dict({"A": np.ones((2, 2))})


@pytest.mark.parametrize("with_S", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose(dtype, with_S):
    ops = make_operands((3, 5), (4, 2), 2, dtype, with_S=with_S, with_bias=True)
    op = DopedKronecker(**ops)
    T = op.T
    assert T.shape == (10, 12) and T.bias is None and T.dtype == np.dtype(dtype)
    assert T.a_shape == (5, 3) and T.b_shape == (2, 4)
    np.testing.assert_array_equal(T.to_dense(), op.to_dense().T)
    z = random_x((6, 12), dtype)
    assert_matches(T(z), z.astype(np.float64) @ dense_W(ops["A"], ops["B"], ops["S"]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_are_read_only(dtype):
    op = DopedKronecker(**make_operands((3, 5), (4, 2), 2, dtype, with_S=True, with_bias=True))
    for arr in (op.A, op.B, op.bias, op.S.data, op.S.indices, op.S.indptr):
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1


def test_int64_indices_kept_wide_are_copied_not_frozen(monkeypatch):
    # Past 2^31 columns or entries S keeps int64 indices; the caller's arrays must then be
    # copied (and only the copies frozen). The limit is lowered to reach that branch here.
    import lpfast.kron as kron_module

    monkeypatch.setattr(kron_module, "_INT32_INDEX_LIMIT", 4)
    ops = make_operands((3, 5), (4, 2), 1, np.float64, with_S=True)
    S = ops["S"]
    indptr, indices = S.indptr.astype(np.int64), S.indices.astype(np.int64)
    op = DopedKronecker(ops["A"], ops["B"], (indptr, indices, S.data))
    assert op.S.indices.dtype == np.int64 and not op.S.indices.flags.writeable
    assert indptr.flags.writeable and indices.flags.writeable
    x = random_x((3, 10), np.float64)
    y0 = op(x)
    indices[:] = 0
    np.testing.assert_array_equal(op(x), y0)


@pytest.mark.parametrize("form", ["csr_array", "tuple_int32", "tuple_int64", "torch_csr"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_caller_mutation_does_not_change_operator(dtype, form):
    ops = make_operands((3, 5), (4, 2), 2, dtype, with_S=True, with_bias=True)
    ops["S"] = S_FORMS[form](ops["S"])
    op = DopedKronecker(**ops)
    x = random_x((5, 10), dtype)
    y0 = call_fixed(op, x)
    ops["A"][...] = 7
    ops["B"][...] = -3
    ops["bias"][...] = 100
    S = ops["S"]
    if isinstance(S, tuple):
        S[2][...] = 9
        S[1][...] = 0
    elif form == "torch_csr":
        S.values()[...] = 9
    else:
        S.data[...] = 9
        S.indices[...] = 0
    assert np.array_equal(call_fixed(op, x), y0)


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
    A, B, S, rng = _sell_case(2, 63, 3, 65, 0.05, dtype, seed=3)
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


# -- threads ---------------------------------------------------------------------------------

def test_thread_settings_round_trip():
    default = lpfast.get_num_threads()
    assert isinstance(lpfast.has_openmp(), bool)
    assert default >= 1
    if lpfast.has_openmp() and "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        assert default == len(os.sched_getaffinity(0))
    if not lpfast.has_openmp():
        assert default == 1
    for n in (1, 2, 3):
        lpfast.set_num_threads(n)
        assert lpfast.get_num_threads() == n
    lpfast.set_num_threads(None)
    assert lpfast.get_num_threads() == default
    lpfast.set_num_threads(1)
    lpfast.set_num_threads(0)
    assert lpfast.get_num_threads() == default


@pytest.mark.parametrize(("n", "exc"), [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_set_num_threads_bad_input(n, exc):
    with pytest.raises(exc, match=r"^n: expected an integer"):
        lpfast.set_num_threads(n)


def _threaded_problem(dtype):
    """An operator big enough for 2 threads at batch >= 2, and inputs hitting every S path."""
    op = DopedKronecker(**make_operands((32, 32), (32, 32), 2, dtype, with_S=True, with_bias=True,
                                        density=0.01, seed=4))
    xs = [random_x((batch, 1024), dtype, seed=batch) for batch in (1, 2, 3, 6, 12, 17, 40, 70)]
    return op, xs


@pytest.mark.parametrize("dtype", DTYPES)
def test_concurrent_calls_match_serial_bit_for_bit(dtype):
    lpfast.set_num_threads(2)
    op, xs = _threaded_problem(dtype)
    serial = [op(x) for x in xs]
    serial_fn = [doped_kp_matmul(x, op.A, op.B, op.S, op.bias) for x in xs]

    def worker(k):
        for _ in range(10):
            for i in range(k, k + len(xs)):
                j = i % len(xs)
                if not np.array_equal(op(xs[j]), serial[j]):
                    return f"operator, input {j}"
                if not np.array_equal(doped_kp_matmul(xs[j], op.A, op.B, op.S, op.bias), serial_fn[j]):
                    return f"function, input {j}"
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(worker, range(4)) if f is not None]
    assert not failures


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_agree(dtype):
    op, xs = _threaded_problem(dtype)
    results = {}
    for n in (1, 2):
        lpfast.set_num_threads(n)
        first = [op(x) for x in xs]
        again = [op(x) for x in xs]
        assert all(np.array_equal(a, b) for a, b in zip(first, again))  # deterministic
        results[n] = first
    for x, y1, y2 in zip(xs, results[1], results[2]):
        want = expected(x, op.A, op.B, op.S, op.bias)
        assert_matches(y1, want, dtype)
        assert_matches(y2, want, dtype)
        np.testing.assert_allclose(y1, y2, rtol=0, atol=RTOL[np.dtype(dtype)] * np.abs(y1).max())


@pytest.mark.parametrize(("a_shape", "b_shape"), [
    pytest.param((4, 4), (4, 4), id="small"),
    pytest.param((32, 32), (32, 32), id="large"),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_result_independent_of_buffer_alignment(dtype, a_shape, b_shape):
    op = DopedKronecker(**make_operands(a_shape, b_shape, 2, dtype, with_S=True, with_bias=True,
                                        density=0.05))
    m, n = op.shape
    x = random_x((5, n), dtype)
    step = np.dtype(dtype).itemsize
    results = []
    for x_off in range(0, 64, step):
        for out_off in range(0, 64, step):
            xa = aligned_empty(x.shape, dtype, x_off)
            xa[...] = x
            results.append(op(xa, out=aligned_empty((5, m), dtype, out_off)))
    assert all(np.array_equal(r, results[0]) for r in results)


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

def _sell_case(m1, n1, m2, n2, density, dtype, seed, rank=1):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rank, m1, n1)).astype(dtype)
    B = rng.standard_normal((rank, m2, n2)).astype(dtype)
    S = sp.random(m1 * m2, n1 * n2, density=density, format="csr", dtype=dtype, random_state=seed)
    return A, B, S, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (1, 1, 1, 1), (4, 4, 4, 4), (5, 2, 7, 3)],
                         ids=str)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6])
def test_sell_batch1_matches_reference_and_batches(shape, density, dtype):
    A, B, S, rng = _sell_case(*shape, density, dtype, seed=7, rank=2)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
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
    A, B, S, rng = _sell_case(3, 2, 4, 1100, 0.01, np.float32, seed=9, rank=2)
    x = rng.standard_normal((batch, 2200)).astype(np.float32)
    expected = ref.doped_kp_matmul(x.astype(np.float64), A.astype(np.float64),
                                   B.astype(np.float64), S.astype(np.float64))
    for y in (lpfast.DopedKronecker(A, B, S)(x), doped_kp_matmul(x, A, B, S)):
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-3)


def test_check_finite_attribute_governs_every_path():
    A, B, S, rng = _sell_case(3, 5, 4, 6, 0.2, np.float64, seed=6)
    op = lpfast.DopedKronecker(A, B, S)
    x = rng.standard_normal((2, 30))
    x[:, 7] = np.inf
    op.check_finite = False
    assert not np.isfinite(op(x[:1])).all() and not np.isfinite(op(x)).all()
    op.check_finite = True
    for rows in (x[:1], x):
        with pytest.raises(ValueError, match=r"^x: contains NaN or Inf"):
            op(rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pickle_round_trip_rebuilds_the_serving_kernel(dtype):
    import pickle

    A, B, S, rng = _sell_case(3, 5, 4, 6, 0.2, dtype, seed=4, rank=2)
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
    A, B, S, rng = _sell_case(64, 64, 64, 64, 0.01, np.float32, seed=11)
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
