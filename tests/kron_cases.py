"""Shared operands, tolerances and comparisons of the doped Kronecker tests (test_kron_*.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lpfast import reference as ref


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

X_LAYOUTS = {
    "strided": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "fortran": np.asfortranarray,
    "transposed_view": lambda x: np.ascontiguousarray(x.T).T,
    "negative_strides": lambda x: x[::-1].copy()[::-1],
    "list": lambda x: x.tolist(),
}


def sell_case(m1, n1, m2, n2, density, dtype, seed, rank=1):
    """Factors, a random S and the generator of a batch-1 (SELL layout) case."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rank, m1, n1)).astype(dtype)
    B = rng.standard_normal((rank, m2, n2)).astype(dtype)
    S = sp.random(m1 * m2, n1 * n2, density=density, format="csr", dtype=dtype, random_state=seed)
    return A, B, S, rng
