"""Benchmarks of the lp subspace fit ``lpfast.lp_subspace`` (p = 1, IRLS).

Data: an embedding-like table, n = 30522 rows (BERT's vocabulary) x d = 384 or 768, with a
power-law spectrum (singular values ~ j^-0.5) in a random orthonormal basis, and 5% outlier
rows 10x larger. One pytest-benchmark group per case (shape, k, dtype), holding:

* ``test_lpfast[t1]``, ``test_lpfast[t2]``  ``lpfast.lp_subspace`` on 1 and 2 threads;
* ``test_reference``  ``lpfast.reference.lp_subspace``: NumPy IRLS with a full SVD of the
  reweighted matrix per step (BLAS/LAPACK on 1 thread).

Both run exactly ITERS IRLS steps from the same SVD start (``tol=0``), so they follow the
same path and the time ratio is the per-step speed-up. Every lpfast benchmark asserts that
it took the same number of steps and that its final cost is <= the reference's final cost
* (1 + 1e-3); so ``--benchmark-disable`` turns this file into a correctness test.

Environment:

* ``LPFAST_BENCH_FULL=1``     the full grid: (384, 768) x k (64, 128) x (float32, float64)
                              (the reference alone then needs ~3-6 s per step at d = 768).
                              Default: 30522 x 384, k = 64, float32 and float64.
* ``LPFAST_BENCH_ITERS``      IRLS steps per fit, default 3.
* ``LPFAST_BENCH_ROUNDS``     timed rounds of each lpfast fit, default 3 (reference: 1).

Run: ``python -m pytest bench/bench_subspace.py --benchmark-only``.
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
from _timing import size

N_ROWS = size(30522, 4000)  # a test run (benchmarks disabled) checks a 4000-row table
DIMS = (384, 768)
KS = (64, 128)
DTYPES = ("float32", "float64")
P = 1.0
OUTLIER_FRACTION = 0.05
SEED = 20240601

FULL = os.environ.get("LPFAST_BENCH_FULL", "") not in ("", "0")
ITERS = int(os.environ.get("LPFAST_BENCH_ITERS", "3"))
ROUNDS = int(os.environ.get("LPFAST_BENCH_ROUNDS", "3"))
COST_SLACK = 1e-3

COMPETITORS = ("test_lpfast", "test_reference")


@dataclass(frozen=True)
class Case:
    d: int
    k: int
    dtype: str
    order: int = 0

    @property
    def id(self) -> str:
        return f"{N_ROWS}x{self.d}-k{self.k}-{self.dtype.replace('float', 'f')}"


def _grid() -> list[Case]:
    cases = [Case(d, k, t) for d, k, t in itertools.product(DIMS, KS, DTYPES)]
    if not FULL:
        cases = [c for c in cases if (c.d, c.k) == (384, 64)]
    return [Case(c.d, c.k, c.dtype, order=i) for i, c in enumerate(cases)]


CASES = _grid()
PARAMS = [pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=c.id)) for c in CASES]


@lru_cache(maxsize=1)
def _table64(d: int) -> np.ndarray:
    rng = np.random.default_rng(SEED + d)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = np.arange(1, d + 1) ** -0.5
    X = (rng.standard_normal((N_ROWS, d)) * s) @ Q.T
    m = int(OUTLIER_FRACTION * N_ROWS)
    rows = rng.choice(N_ROWS, m, replace=False)
    X[rows] = 10.0 * np.sqrt(s @ s / d) * rng.standard_normal((m, d))
    return X


@lru_cache(maxsize=2)
def table(d: int, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(_table64(d), dtype=dtype)


@lru_cache(maxsize=8)
def reference_fit(d: int, k: int, dtype: str) -> tuple[list[float], int]:
    """(history, n_iter) of the reference IRLS on one thread (computed once per case)."""
    with limit_threads(1):
        _, history, n_iter, _ = lpfast.reference.lp_subspace(table(d, dtype), k, P,
                                                             max_iter=ITERS, tol=0.0)
    return history, n_iter


@pytest.mark.parametrize("threads", [1, 2], ids=["t1", "t2"])
@pytest.mark.parametrize("case", PARAMS)
def test_lpfast(benchmark, case: Case, threads: int):
    X = table(case.d, case.dtype)
    with limit_threads(threads):
        res = benchmark.pedantic(lpfast.lp_subspace, args=(X, case.k, P),
                                 kwargs={"max_iter": ITERS, "tol": 0.0},
                                 rounds=ROUNDS, iterations=1, warmup_rounds=0)
    history, n_iter = reference_fit(case.d, case.k, case.dtype)
    assert res.basis.dtype == np.dtype(case.dtype) and res.basis.shape == (case.d, case.k)
    assert res.n_iter == n_iter
    assert res.cost <= history[-1] * (1 + COST_SLACK)
    benchmark.extra_info.update(cost=res.cost, reference_cost=history[-1], n_iter=res.n_iter)


@pytest.mark.parametrize("case", PARAMS)
def test_reference(benchmark, case: Case):
    X = table(case.d, case.dtype)
    with limit_threads(1):
        V, history, n_iter, _ = benchmark.pedantic(
            lpfast.reference.lp_subspace, args=(X, case.k, P),
            kwargs={"max_iter": ITERS, "tol": 0.0}, rounds=1, iterations=1, warmup_rounds=0)
    assert n_iter == ITERS
    assert np.all(np.diff(history) <= 1e-6 * history[0])  # majorize-minimize: descends
    benchmark.extra_info.update(cost=history[-1], n_iter=n_iter)
