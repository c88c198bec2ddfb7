"""Benchmarks of the lp Lewis weights ``lpfast.lewis_weights`` (p = 1).

Data: the embedding-like table of ``bench_subspace.py`` (n = 30522 rows, power-law
spectrum, 5% outlier rows 10x larger). One pytest-benchmark group per case (d, dtype):

* ``test_reference``      ``lpfast.reference.lewis_weights``: the plain Cohen-Peng iteration
                          in float64 NumPy (eigendecomposition pseudo-inverse per step),
                          BLAS on one thread, to ``tol = 1e-8``;
* ``test_exact``          ``method="exact"`` on one thread, same ``tol``; asserts agreement
                          with the reference to 1e-6 (float64) / 1e-3 (float32);
* ``test_sketch``         ``method="sketch"`` on one thread; asserts a median relative
                          error <= 10% against the exact weights and records it.

Speed-ups (reference / exact, exact / sketch) are the ratios of the group's medians.
``LPFAST_BENCH_FULL=1``: d in (384, 768) x (float32, float64); default: d = 384, both dtypes.
Run: ``python -m pytest bench/bench_lewis.py --benchmark-only``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest

import lpfast
import lpfast.reference

from _threads import limit_threads
from bench_subspace import N_ROWS, table

P = 1.0
TOL = 1e-8
FULL = os.environ.get("LPFAST_BENCH_FULL", "") not in ("", "0")
DIMS = (384, 768) if FULL else (384,)
DTYPES = ("float32", "float64")
COMPETITORS = ("test_reference", "test_exact", "test_sketch")


@dataclass(frozen=True)
class Case:
    d: int
    dtype: str
    order: int = 0

    @property
    def id(self) -> str:
        return f"{N_ROWS}x{self.d}-{self.dtype.replace('float', 'f')}"


CASES = [Case(d, t, order=i) for i, (d, t) in enumerate(itertools.product(DIMS, DTYPES))]
PARAMS = [pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=f"lewis {c.id}"))
          for c in CASES]


@lru_cache(maxsize=4)
def reference_weights(d: int) -> np.ndarray:
    with limit_threads(1):
        return lpfast.reference.lewis_weights(table(d, "float64"), P, tol=TOL)


@lru_cache(maxsize=4)
def exact_weights(d: int, dtype: str) -> np.ndarray:
    with limit_threads(1):
        return lpfast.lewis_weights(table(d, dtype), P, tol=TOL)


@pytest.mark.parametrize("case", PARAMS)
def test_reference(benchmark, case: Case):
    X = table(case.d, case.dtype)
    with limit_threads(1):
        w = benchmark.pedantic(lpfast.reference.lewis_weights, args=(X, P), kwargs={"tol": TOL},
                               rounds=1, iterations=1, warmup_rounds=0)
    assert w.sum() == pytest.approx(case.d, rel=1e-6)


@pytest.mark.parametrize("case", PARAMS)
def test_exact(benchmark, case: Case):
    X = table(case.d, case.dtype)
    with limit_threads(1):
        w = benchmark.pedantic(lpfast.lewis_weights, args=(X, P), kwargs={"tol": TOL},
                               rounds=3, iterations=1, warmup_rounds=0)
    ref = reference_weights(case.d)
    rtol = 1e-6 if case.dtype == "float64" else 1e-3
    np.testing.assert_allclose(w, ref, rtol=rtol, atol=rtol * ref.max())


@pytest.mark.parametrize("case", PARAMS)
def test_sketch(benchmark, case: Case):
    X = table(case.d, case.dtype)
    with limit_threads(1):
        w = benchmark.pedantic(lpfast.lewis_weights, args=(X, P),
                               kwargs={"method": "sketch", "seed": 0},
                               rounds=3, iterations=1, warmup_rounds=0)
    exact = exact_weights(case.d, case.dtype).astype(np.float64)
    rel = np.abs(w - exact) / exact
    median = float(np.median(rel))
    benchmark.extra_info.update(median_relative_error=median,
                                p90_relative_error=float(np.quantile(rel, 0.9)))
    assert median <= 0.10
