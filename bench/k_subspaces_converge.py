"""Lloyd to convergence, lpfast against the reference, from the benchmark's starts.

Same data and starts as ``bench_projective.py`` (30522 x 384 float32, random-group bases,
j = 32, one thread), but each fit runs until the cost stops dropping by more than 1e-6
relative (the default tol) instead of a fixed 6 iterations, so late iterations, where
lpfast's bounds skip most of the assignment, count too. The speed-up is per iteration:
the two may stop an iteration apart when the last cost decrease sits within rounding of
the tolerance.

Run: ``python bench/k_subspaces_converge.py`` (all of k in 3, 5, 10 and p in 2, 1).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_projective as bp  # noqa: E402 - the benchmark's data and starts
from _threads import HAVE_THREADPOOLCTL, limit_threads  # noqa: E402

import lpfast  # noqa: E402
from lpfast import reference as ref  # noqa: E402


def main():
    X = bp.data()
    print("k  p  iterations  lpfast s  reference s  speed-up  labels equal  cost rel. diff")
    for p in (2.0, 1.0):
        for k in (3, 5, 10):
            start = bp.start(k)
            t = time.perf_counter()
            mine = lpfast.k_subspaces(X, k, bp.J, p, init_bases=start, max_iter=100, tol=1e-6)
            t_mine = time.perf_counter() - t
            t = time.perf_counter()
            _, labels, cost, n_iter, _ = ref.k_subspaces_lloyd(X, start, p=p, max_iter=100,
                                                               tol=1e-6, eps=bp._eps())
            t_ref = time.perf_counter() - t
            speedup = (t_ref / n_iter) / (t_mine / mine.n_iter)
            print(f"{k:<2} {p:g}  {mine.n_iter:>4} / {n_iter:<4}  {t_mine:8.2f}  {t_ref:11.2f}  "
                  f"{speedup:7.2f}x  {np.mean(mine.labels == labels):12.4f}  "
                  f"{abs(mine.cost - cost) / cost:.1e}", flush=True)


if __name__ == "__main__":
    if not HAVE_THREADPOOLCTL:
        print("threadpoolctl missing: NumPy's BLAS keeps its default threads")
    with limit_threads(1):
        main()
