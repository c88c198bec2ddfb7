"""Benchmarks of the compression planner ``lpfast.plan_compression`` (issue 6).

Data: an embedding-like table, n = 30522 rows (BERT's vocabulary) x d = 384, float32, with
a power-law spectrum (singular values ~ j^-0.5) in a random orthonormal basis and 5% outlier
rows 10x larger (the table of bench_subspace.py), and Zipf usage (count of the r-th most
used row ~ r^-1.1, ranks in random order) turned into row weights by
``lpfast.usage_weights``. One ratio (RATIO, default 8: budget n*d/8 parameters).

Group ``planner-30522x384-f32-r8``:

* ``test_candidate[<c>-plain]``, ``test_candidate[<c>-doped]``  the planner restricted to one
  candidate and one doping flag (a doped row includes the undoped fit it starts from);
  ``extra_info`` keeps the row (rank, exact rows, params, error);
* ``test_plan``  the whole default plan (6 candidates x with/without doping, winner refit);
  ``extra_info`` keeps every row's screening seconds and the load average. Target: <= 60 s
  on the 2-core development machine.

Each benchmark asserts its plan is right (parameter counts exact and within the budget, the
best row the lowest error), so ``--benchmark-disable`` (the default of ``python -m pytest``)
turns this file into a test; it then plans a CHECK_ROWS x CHECK_DIM table of the same kind
instead, since the assertions hold at any size and the full table takes minutes per plan.

Environment: ``LPFAST_BENCH_RATIO`` (default 8).

Run: ``python -m pytest bench/bench_planner.py --benchmark-only``
(timings: ``--benchmark-columns=min,median,max``).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pytest

import lpfast
from lpfast import reference as ref

from _data import SEED, outlier_table

N_ROWS, DIM = 30522, 384
CHECK_ROWS, CHECK_DIM = 3000, 48  # the table when benchmarks are disabled (a test run)
RATIO = float(os.environ.get("LPFAST_BENCH_RATIO", "8"))
GROUP = f"planner-{N_ROWS}x{DIM}-f32-r{RATIO:g}"
CANDIDATES = ("svd", "lp:1", "lp:1.5", "projective:2", "projective:5", "projective:10")


@lru_cache(maxsize=1)
def table(n_rows: int = N_ROWS, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    X = outlier_table(rng, n_rows, dim)
    counts = np.floor(1e7 / np.arange(1, n_rows + 1) ** 1.1)[rng.permutation(n_rows)]
    return np.ascontiguousarray(X, dtype=np.float32), lpfast.usage_weights(counts)


def data(benchmark) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's table, or the small one when benchmarks are disabled."""
    return table() if benchmark.enabled else table(CHECK_ROWS, CHECK_DIM)


def _load() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


def check(plan: lpfast.Plan) -> None:
    n, d = plan.shape
    assert plan.budget == int(n * d // RATIO)
    errors = [r["error"] for r in plan.rows]
    assert errors == sorted(errors) and plan.best.error == errors[0]
    for r in plan.rows:
        want = ref.row_doped_n_params(r["method"], n, d, r["rank"], r["n_exact"],
                                      r["n_subspaces"])
        assert r["n_params"] == want <= plan.budget
    assert plan.best.n_params == plan.best_row["n_params"]


def _row_info(r: dict) -> dict:
    return {k: r[k] for k in ("candidate", "rank", "n_exact", "n_params", "error", "lp_cost",
                              "seconds")}


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("doped", [False, True], ids=["plain", "doped"])
@pytest.mark.parametrize("candidate", CANDIDATES)
def test_candidate(benchmark, candidate: str, doped: bool):
    X, w = data(benchmark)
    plan = benchmark.pedantic(lpfast.plan_compression, args=(X, RATIO),
                              kwargs={"weights": w, "seed": 0, "candidates": [candidate],
                                      "doping": (doped,)},
                              rounds=1, iterations=1, warmup_rounds=0)
    check(plan)
    assert len(plan.rows) == 1 and plan.rows[0]["doped"] == doped
    benchmark.extra_info.update(row=_row_info(plan.rows[0]), load=_load())


@pytest.mark.benchmark(group=GROUP)
def test_plan(benchmark):
    X, w = data(benchmark)
    plan = benchmark.pedantic(lpfast.plan_compression, args=(X, RATIO),
                              kwargs={"weights": w, "seed": 0},
                              rounds=1, iterations=1, warmup_rounds=0)
    check(plan)
    assert len(plan.rows) == 2 * len(CANDIDATES) and not plan.skipped
    print(f"\n{plan}")
    benchmark.extra_info.update(rows=[_row_info(r) for r in plan.rows], seconds=plan.seconds,
                                best=plan.best_row["candidate"], load=_load())
