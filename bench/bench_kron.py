"""Benchmarks of the doped Kronecker product ``y = x @ W.T``, ``W = kron(A, B) + S``.

One pytest-benchmark group per case (shape, doping density, batch, dtype, threads), each
holding five competitors that compute the same ``y``:

* ``test_lpfast_prepared``  ``lpfast.DopedKronecker(A, B, S)(x)``, operator built once;
* ``test_lpfast_oneshot``   ``lpfast.doped_kp_matmul(x, A, B, S)``, validates S every call;
* ``test_reference``        ``lpfast.reference.doped_kp_matmul`` (NumPy reshape + SciPy CSR);
* ``test_numpy_dense``      ``x @ W.T`` with W formed densely once per case (BLAS GEMM);
* ``test_torch_linear``     ``torch.nn.functional.linear(x, W)``, skipped without torch.

Every benchmark checks its result against a float64 reference product, so
``--benchmark-disable`` turns this file into a correctness test.

Environment:

* ``LPFAST_BENCH_FULL=1``        the full grid: 3 shapes x 3 densities x batch (1, 32, 128)
                                 x (float32, float64) x threads (1, 2); ~15-20 min.
                                 Default: 4096x4096 at 1% for every batch/dtype/threads,
                                 plus one case per other shape and density (16 cases).
* ``LPFAST_BENCH_MAX_TIME``      seconds of timing (and at most of warm-up) per benchmark,
                                 default 0.3.
* ``LPFAST_BENCH_MIN_ROUNDS``    minimum timed rounds per benchmark, default 10.

Thread counts: ``lpfast.set_num_threads``, ``torch.set_num_threads`` and, when
threadpoolctl is installed, ``threadpool_limits`` for NumPy's BLAS and the OpenMP
runtimes, so every competitor of a case uses the same number of threads.

Run: ``python -m pytest bench/bench_kron.py --benchmark-only`` (or ``python bench/report.py``
for a markdown table).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest
import scipy.sparse as sp

import lpfast
import lpfast.reference

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is optional
    torch = None

from _threads import HAVE_THREADPOOLCTL, limit_threads

# -- the grid ---------------------------------------------------------------------------------

#: W shape name -> (a_shape (m1, n1), b_shape (m2, n2)); W is (m1*m2, n1*n2).
SHAPES = {
    "1024x1024": ((32, 32), (32, 32)),
    "4096x1024": ((64, 32), (64, 32)),
    "4096x4096": ((64, 64), (64, 64)),
}
DENSITIES = (0.005, 0.01, 0.05)
BATCHES = (1, 32, 128)
DTYPES = ("float32", "float64")
THREADS = (1, 2)
RANK = 1  # Kronecker rank R
SEED = 20240531

FULL = os.environ.get("LPFAST_BENCH_FULL", "") not in ("", "0")
MAX_TIME = float(os.environ.get("LPFAST_BENCH_MAX_TIME", "0.3"))
MIN_ROUNDS = int(os.environ.get("LPFAST_BENCH_MIN_ROUNDS", "10"))

#: Tolerance relative to max |y|: results are compared with a float64 product computed
#: from the same (dtype-rounded) inputs.
TOL = {"float32": 1e-4, "float64": 1e-10}

#: Benchmark functions in the order they run (and are listed) within a group; conftest.py
#: sorts the collected items by (case, this order).
COMPETITORS = ("test_lpfast_prepared", "test_lpfast_oneshot", "test_reference",
               "test_numpy_dense", "test_torch_linear")


@dataclass(frozen=True)
class Case:
    shape: str
    density: float
    batch: int
    dtype: str
    threads: int
    order: int = 0

    @property
    def id(self) -> str:
        return (f"{self.shape}-d{self.density * 100:g}%-b{self.batch}-"
                f"{self.dtype.replace('float', 'f')}-t{self.threads}")


def _grid() -> list[Case]:
    # Outer loops over what the cached operands depend on (shape, density, dtype), so that
    # consecutive groups reuse them and only one dense W is alive at a time.
    combos = itertools.product(SHAPES, DENSITIES, DTYPES, BATCHES, THREADS)
    cases = [Case(s, d, b, t, th) for s, d, t, b, th in combos]
    if not FULL:
        extra = {("1024x1024", 0.01), ("4096x1024", 0.01), ("4096x4096", 0.005),
                 ("4096x4096", 0.05)}
        cases = [c for c in cases
                 if (c.shape == "4096x4096" and c.density == 0.01)
                 or ((c.shape, c.density) in extra
                     and (c.batch, c.dtype, c.threads) == (32, "float32", 2))]
    return [Case(c.shape, c.density, c.batch, c.dtype, c.threads, order=i)
            for i, c in enumerate(cases)]


CASES = _grid()
TIMING = {"min_rounds": MIN_ROUNDS, "max_time": MAX_TIME, "warmup": True,
          "warmup_iterations": 100, "disable_gc": True}
PARAMS = [pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=c.id, **TIMING))
          for c in CASES]


# -- operands (built once per case, cached) ---------------------------------------------------

@lru_cache(maxsize=2)
def _operands64(shape: str) -> tuple[np.ndarray, np.ndarray]:
    a_shape, b_shape = SHAPES[shape]
    rng = np.random.default_rng(SEED)
    return rng.standard_normal((RANK, *a_shape)), rng.standard_normal((RANK, *b_shape))


@lru_cache(maxsize=2)
def _doping64(shape: str, density: float) -> sp.csr_matrix:
    (m1, n1), (m2, n2) = SHAPES[shape]
    values = np.random.default_rng(SEED + 2)
    return sp.random(m1 * m2, n1 * n2, density=density, format="csr", dtype=np.float64,
                     rng=np.random.default_rng(SEED + 1),
                     data_rvs=values.standard_normal)


@dataclass
class Operands:
    A: np.ndarray          # (R, m1, n1)
    B: np.ndarray          # (R, m2, n2)
    S: sp.csr_matrix       # (m, n), int32 indices as SciPy makes them
    op: lpfast.DopedKronecker
    W: np.ndarray          # dense (m, n), C-contiguous
    W_torch: object        # torch view of W, or None


@lru_cache(maxsize=2)
def operands(shape: str, density: float, dtype: str) -> Operands:
    A64, B64 = _operands64(shape)
    A, B = A64.astype(dtype), B64.astype(dtype)
    S = _doping64(shape, density).astype(dtype)
    W = np.ascontiguousarray(lpfast.reference.kron_dense(A, B, S), dtype=dtype)
    W_torch = torch.from_numpy(W) if torch is not None else None
    return Operands(A, B, S, lpfast.DopedKronecker(A, B, S), W, W_torch)


@lru_cache(maxsize=4)
def inputs(shape: str, batch: int, dtype: str) -> np.ndarray:
    (_, n1), (_, n2) = SHAPES[shape]
    return np.random.default_rng(SEED + 3).standard_normal((batch, n1 * n2)).astype(dtype)


@lru_cache(maxsize=4)
def expected(shape: str, density: float, batch: int, dtype: str) -> np.ndarray:
    """The float64 product of the dtype-rounded operands (the ground truth for a case)."""
    ops, x = operands(shape, density, dtype), inputs(shape, batch, dtype)
    f64 = np.float64
    return lpfast.reference.doped_kp_matmul(x.astype(f64), ops.A.astype(f64),
                                            ops.B.astype(f64), ops.S.astype(f64))


# -- helpers ----------------------------------------------------------------------------------

def check(y, case: Case) -> None:
    if torch is not None and isinstance(y, torch.Tensor):
        y = y.numpy()
    ref = expected(case.shape, case.density, case.batch, case.dtype)
    assert y.shape == ref.shape
    assert y.dtype == np.dtype(case.dtype)
    tol = TOL[case.dtype]
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * float(np.abs(ref).max()))


def operator_bytes_read(op: lpfast.DopedKronecker, batch: int) -> int:
    """Bytes of the operator one call reads: the factors, the bias, and S in the layout the
    call uses (SELL for one row of x, CSR for a batch); the operator stores both."""
    sparse = op._sell if batch == 1 else op._S  # noqa: SLF001 - the layouts are private
    parts = (op.A, op.B, op.bias, *(sparse or ()))
    return sum(a.nbytes for a in parts if a is not None)


def run(benchmark, case: Case, label: str, fn, *args) -> None:
    ops, x = operands(case.shape, case.density, case.dtype), inputs(case.shape, case.batch,
                                                                    case.dtype)
    (m1, n1), (m2, n2) = SHAPES[case.shape]
    benchmark.extra_info.update(
        competitor=label, case=case.id, shape=case.shape, m1=m1, n1=n1, m2=m2, n2=n2,
        rank=RANK, density=case.density, nnz=ops.op.nnz, batch=case.batch, dtype=case.dtype,
        itemsize=np.dtype(case.dtype).itemsize, threads=case.threads,
        operator_nbytes=operator_bytes_read(ops.op, case.batch), x_nbytes=x.nbytes, y_nbytes=case.batch * m1 * m2 *
        np.dtype(case.dtype).itemsize, threadpoolctl=HAVE_THREADPOOLCTL)
    with limit_threads(case.threads):
        y = benchmark(fn, *args)
    # Other processes on the machine skew multi-threaded timings most: keep the evidence.
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    check(y, case)


# -- the competitors --------------------------------------------------------------------------

@pytest.mark.parametrize("case", PARAMS)
def test_lpfast_prepared(benchmark, case):
    ops = operands(case.shape, case.density, case.dtype)
    run(benchmark, case, "lpfast", ops.op, inputs(case.shape, case.batch, case.dtype))


@pytest.mark.parametrize("case", PARAMS)
def test_lpfast_oneshot(benchmark, case):
    ops = operands(case.shape, case.density, case.dtype)
    run(benchmark, case, "lpfast one-shot", lpfast.doped_kp_matmul,
        inputs(case.shape, case.batch, case.dtype), ops.A, ops.B, ops.S)


@pytest.mark.parametrize("case", PARAMS)
def test_reference(benchmark, case):
    ops = operands(case.shape, case.density, case.dtype)
    run(benchmark, case, "reference", lpfast.reference.doped_kp_matmul,
        inputs(case.shape, case.batch, case.dtype), ops.A, ops.B, ops.S)


@pytest.mark.parametrize("case", PARAMS)
def test_numpy_dense(benchmark, case):
    ops = operands(case.shape, case.density, case.dtype)
    # W.T is an F-ordered view: BLAS GEMM with a transpose flag, no copy.
    run(benchmark, case, "numpy dense", np.matmul, inputs(case.shape, case.batch, case.dtype),
        ops.W.T)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("case", PARAMS)
def test_torch_linear(benchmark, case):
    ops = operands(case.shape, case.density, case.dtype)
    x = torch.from_numpy(inputs(case.shape, case.batch, case.dtype))
    with torch.inference_mode():
        run(benchmark, case, "torch dense", F.linear, x, ops.W_torch)
