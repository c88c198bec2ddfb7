"""Benchmarks of k-subspace projective clustering (``lpfast.k_subspaces``).

Per case (30522 x 384 float32 rows, the size of BERT's embedding table, planted as 8
subspaces of dim 32 plus noise; j = 32; one thread for every competitor):

* ``test_lpfast_lloyd`` / ``test_reference_lloyd``: ``ITERS`` Lloyd iterations from the
  same random-group bases (tol = 0), lpfast vs ``lpfast.reference.k_subspaces_lloyd``
  (NumPy: one GEMM for the distances, BLAS syrk Grams, ``np.linalg.eigh``). Both assert the
  same labels/cost; divide by ``ITERS`` for the time per iteration.
* ``test_coreset_vs_full``: ``seeding="coreset"`` against all ``n_init`` restarts of D^p
  seeding on the full data (timed once each); asserts the coreset's final cost is within
  1% of the full run's and records the speed-up in ``extra_info``.

Default: k = 3, p = 2. ``LPFAST_BENCH_FULL=1``: k in (3, 5, 10) x p in (2, 1).
Run: ``python -m pytest bench/bench_projective.py --benchmark-only``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest

import lpfast
from lpfast import _core
from lpfast import reference as ref
from lpfast._validate import default_eps

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # NumPy's BLAS then keeps its default threads
    threadpool_limits = None

N, D, J, K_TRUE = 30522, 384, 32, 8
ITERS = 6
FULL = os.environ.get("LPFAST_BENCH_FULL", "") not in ("", "0")
COMPETITORS = ("test_lpfast_lloyd", "test_reference_lloyd", "test_coreset_vs_full")


@dataclass(frozen=True)
class Case:
    k: int
    p: float
    order: int

    def __str__(self):
        return f"k{self.k}-p{self.p:g}"


CASES = ([Case(k, p, i) for i, (k, p) in enumerate((k, p) for k in (3, 5, 10) for p in (2.0, 1.0))]
         if FULL else [Case(3, 2.0, 0)])


@lru_cache(maxsize=1)
def data():
    rng = np.random.default_rng(0)
    X = np.empty((N, D), np.float32)
    lab = rng.integers(0, K_TRUE, N)
    for c in range(K_TRUE):
        V = np.linalg.qr(rng.standard_normal((D, J)))[0] * np.linspace(3, 1, J)
        idx = np.flatnonzero(lab == c)
        X[idx] = rng.standard_normal((idx.size, J)) @ V.T + 0.3 * rng.standard_normal((idx.size, D))
    return X


@lru_cache(maxsize=8)
def start(k):
    return _core.k_subspaces_seed(data(), np.ones(N), k, J, 2.0, 1, 0, 0)  # random groups


@pytest.fixture(autouse=True)
def one_thread():
    lpfast.set_num_threads(1)
    limit = threadpool_limits(1) if threadpool_limits else None
    yield
    if limit is not None:
        limit.unregister()
    lpfast.set_num_threads(None)


_results = {}


def _eps():
    return default_eps(data(), np.ones(N))  # the IRLS floor lpfast picks by default


@pytest.mark.parametrize("case", CASES, ids=str)
def test_lpfast_lloyd(benchmark, case):
    benchmark.group = f"k-subspaces {case} x{ITERS} iterations"
    r = benchmark.pedantic(lambda: lpfast.k_subspaces(data(), case.k, J, case.p,
                                                      init_bases=start(case.k), max_iter=ITERS,
                                                      tol=0.0), rounds=2, iterations=1)
    assert r.n_iter == ITERS
    _results[("lpfast", str(case))] = r


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_lloyd(benchmark, case):
    benchmark.group = f"k-subspaces {case} x{ITERS} iterations"
    out = benchmark.pedantic(lambda: ref.k_subspaces_lloyd(data(), start(case.k), p=case.p,
                                                           max_iter=ITERS, tol=0.0, eps=_eps()),
                             rounds=2, iterations=1)
    mine = _results.get(("lpfast", str(case)))
    if mine is not None:
        assert np.mean(mine.labels == out[1]) > 0.999
        assert mine.cost == pytest.approx(out[2], rel=1e-4)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_coreset_vs_full(benchmark, case):
    benchmark.group = f"k-subspaces {case} seeding"
    t = time.perf_counter()
    full = lpfast.k_subspaces(data(), case.k, J, case.p, seeding="dp", n_init=10, seed=0)
    t_full = time.perf_counter() - t
    core = benchmark.pedantic(lambda: lpfast.k_subspaces(data(), case.k, J, case.p,
                                                         seeding="coreset", n_init=10, seed=0),
                              rounds=1, iterations=1)
    t_core = benchmark.stats.stats.mean
    benchmark.extra_info.update(full_seconds=t_full, coreset_seconds=t_core,
                                speedup=t_full / t_core, full_cost=full.cost, coreset_cost=core.cost)
    print(f"\n{case}: full restarts {t_full:.2f}s cost {full.cost:.6g}; coreset {t_core:.2f}s "
          f"cost {core.cost:.6g}; speed-up {t_full / t_core:.1f}x")
    assert core.cost <= full.cost * 1.01
