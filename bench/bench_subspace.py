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

Two more groups per case against the plain NumPy way, one thread each:

* ``p2-<case>``: ``test_p2_lpfast`` (``lpfast.lp_subspace(X, k, p=2)``, the whole call)
  against ``test_p2_numpy`` (``np.linalg.eigh(X.T @ X)``, top k columns; NumPy's matmul
  forms ``X.T @ X`` by a symmetric rank-k update). Both assert the same p = 2 cost to 1e-4.
* ``step-<case>``: one p = 1 IRLS step from the same SVD start, ``test_step_lpfast``
  (``_core.lp_subspace_irls`` with ``max_iter=1``) against ``test_step_numpy`` (distances,
  weights, ``Xs.T @ Xs`` for ``Xs = sqrt(omega) * X``, ``eigh``, distances again). Both
  assert the same cost after the step to 1e-4.

On a loaded machine, add ``--benchmark-timer time.process_time`` (CPU time of this
process; the suites here ran on two cores shared with other jobs).

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
from lpfast import _core
from lpfast._validate import default_eps

from _data import SEED, outlier_table
from _threads import limit_threads
from _timing import size

N_ROWS = size(30522, 4000)  # a test run (benchmarks disabled) checks a 4000-row table
DIMS = (384, 768)
KS = (64, 128)
DTYPES = ("float32", "float64")
P = 1.0

FULL = os.environ.get("LPFAST_BENCH_FULL", "") not in ("", "0")
ITERS = int(os.environ.get("LPFAST_BENCH_ITERS", "3"))
ROUNDS = int(os.environ.get("LPFAST_BENCH_ROUNDS", "3"))
COST_SLACK = 1e-3

COMPETITORS = ("test_lpfast", "test_reference", "test_p2_lpfast", "test_p2_numpy",
               "test_step_lpfast", "test_step_numpy")


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
    return outlier_table(np.random.default_rng(SEED + d), N_ROWS, d)


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


def _cost(X: np.ndarray, V: np.ndarray, p: float) -> float:
    """sum_i dist(x_i, span V)^p in float64 (the check shared by both sides of a group)."""
    X64, V64 = X.astype(np.float64), V.astype(np.float64)
    d2 = np.einsum("ij,ij->i", X64, X64) - np.einsum("ij,ij->i", X64 @ V64, X64 @ V64)
    return float((np.sqrt(np.maximum(d2, 0.0)) ** p).sum())


@lru_cache(maxsize=4)
def p2_cost(d: int, k: int, dtype: str) -> float:
    """The optimal p = 2 cost, from float64 NumPy."""
    X = table(d, "float64")
    _, U = np.linalg.eigh(X.T @ X)
    return _cost(X, U[:, ::-1][:, :k], 2.0)


def numpy_p2(X: np.ndarray, k: int) -> np.ndarray:
    _, U = np.linalg.eigh(X.T @ X)
    return U[:, ::-1][:, :k]


@pytest.mark.parametrize("case", PARAMS)
def test_p2_lpfast(benchmark, case: Case):
    benchmark.group = f"p2-{case.id}"
    X = table(case.d, case.dtype)
    with limit_threads(1):
        res = benchmark.pedantic(lpfast.lp_subspace, args=(X, case.k, 2.0), rounds=ROUNDS,
                                 iterations=1, warmup_rounds=1)
    assert _cost(X, res.basis, 2.0) == pytest.approx(p2_cost(case.d, case.k, case.dtype), rel=1e-4)


@pytest.mark.parametrize("case", PARAMS)
def test_p2_numpy(benchmark, case: Case):
    benchmark.group = f"p2-{case.id}"
    X = table(case.d, case.dtype)
    with limit_threads(1):
        V = benchmark.pedantic(numpy_p2, args=(X, case.k), rounds=ROUNDS, iterations=1,
                               warmup_rounds=1)
    assert _cost(X, V, 2.0) == pytest.approx(p2_cost(case.d, case.k, case.dtype), rel=1e-4)


def numpy_step(X: np.ndarray, V: np.ndarray, p: float, eps: float) -> tuple[np.ndarray, float]:
    """One IRLS step as NumPy would write it: (next basis, its cost)."""
    sq = np.einsum("ij,ij->i", X, X)

    def dist(B):
        P = X @ B
        return np.sqrt(np.maximum(sq - np.einsum("ij,ij->i", P, P), 0.0))

    omega = np.maximum(dist(V), eps) ** (p - 2.0)
    Xs = X * np.sqrt(omega / omega.max()).astype(X.dtype)[:, None]
    _, U = np.linalg.eigh(Xs.T @ Xs)
    V1 = np.ascontiguousarray(U[:, ::-1][:, :V.shape[1]])
    return V1, float((dist(V1).astype(np.float64) ** p).sum())


@lru_cache(maxsize=4)
def step_start(d: int, k: int, dtype: str) -> tuple[np.ndarray, float]:
    X = table(d, dtype)
    with limit_threads(1):
        V0 = _core.weighted_pca(X, None, k)
    return V0, default_eps(X, None)


@lru_cache(maxsize=4)
def step_cost(d: int, k: int, dtype: str) -> float:
    """Cost after one p = 1 step, from float64 NumPy."""
    V0, eps = step_start(d, k, dtype)
    return numpy_step(table(d, "float64"), V0.astype(np.float64), P, eps)[1]


@pytest.mark.parametrize("case", PARAMS)
def test_step_lpfast(benchmark, case: Case):
    benchmark.group = f"step-{case.id}"
    X = table(case.d, case.dtype)
    V0, eps = step_start(case.d, case.k, case.dtype)
    with limit_threads(1):
        _, history, n_iter, _ = benchmark.pedantic(
            _core.lp_subspace_irls, args=(X, None, V0, P, eps, 0.0, 1, None), rounds=ROUNDS,
            iterations=1, warmup_rounds=1)
    assert n_iter == 1
    assert history[-1] == pytest.approx(step_cost(case.d, case.k, case.dtype), rel=1e-4)


@pytest.mark.parametrize("case", PARAMS)
def test_step_numpy(benchmark, case: Case):
    benchmark.group = f"step-{case.id}"
    X = table(case.d, case.dtype)
    V0, eps = step_start(case.d, case.k, case.dtype)
    with limit_threads(1):
        _, cost = benchmark.pedantic(numpy_step, args=(X, V0, P, eps), rounds=ROUNDS,
                                     iterations=1, warmup_rounds=1)
    assert cost == pytest.approx(step_cost(case.d, case.k, case.dtype), rel=1e-4)
