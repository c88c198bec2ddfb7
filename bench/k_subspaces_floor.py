"""How fast can an exact Lloyd iteration be on this machine? A floor against the reference.

Issue 4 asks lpfast's Lloyd iterations to be 3x faster than ``reference.k_subspaces_lloyd``
(single thread, the benchmark's 30522 x 384 float32 data, j = 32). Both must compute the
same labels and cost, so both do the same irreducible work per iteration:

  assign    every row's distance to every basis: 2 n d k j flops. A bound from the last
            iteration could spare a row only if no basis turned far; ``sin theta`` (the
            largest principal-angle sine between a basis and its successor) is near 1 in
            most of the benchmark's iterations, so the full product is charged where it
            exceeds 0.5, and elsewhere only each row's own distance (2 n d j).
  Grams     p = 2: each cluster's Gram updated by the rows that moved in or out (or rebuilt,
            whichever reads fewer rows), the largest one left out (it can be derived from
            the sum of all Grams); the first iteration builds all of them: n d^2 flops.
            p != 2: every IRLS step needs every cluster's Gram under new weights, n d^2 flops
            per step (the lower triangle's multiply-adds).
  other     p != 2: each IRLS step after the first, the members' distances: 2 n d j flops.
  eigs      one top-j eigensolve per changed Gram.

Flops are charged at the single-thread rate NumPy's BLAS reaches on a cache-friendly square
float32 GEMM (its best case), eigensolves at LAPACK's float32 ``syevr`` for the top j
(through SciPy; lpfast's own double-precision solver is slower). "flops only" leaves the
eigensolves out. The reference is timed as in the benchmark (best of 2 rounds of ITERS
iterations); lpfast's labels after each iteration, equal to the reference's
(``bench/k_subspaces_converge.py``), give the rows that moved.

Run: ``python bench/k_subspaces_floor.py`` (about two minutes).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import scipy.linalg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_projective as bp  # noqa: E402 - the benchmark's data and starts
from _threads import HAVE_THREADPOOLCTL, limit_threads  # noqa: E402

import lpfast  # noqa: E402
from lpfast import reference as ref  # noqa: E402

IRLS_STEPS = 3  # the reference's and lpfast's default


def best_time(f, repeat):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_rate():
    """Single-thread float32 GEMM flops per second: NumPy's best on square operands."""
    rng = np.random.default_rng(0)
    rates = []
    for m in (384, 1024):
        a, b = (rng.standard_normal((m, m)).astype(np.float32) for _ in range(2))
        rates.append(2.0 * m**3 / best_time(lambda: a @ b, 10))
    return max(rates)


def eig_seconds(X):
    """Top-J eigenpairs of a float32 d x d Gram by LAPACK's syevr (seconds)."""
    G = X[: len(X) // 3].T @ X[: len(X) // 3]
    return best_time(lambda: scipy.linalg.eigh(G, subset_by_index=[bp.D - bp.J, bp.D - 1],
                                               driver="evr"), 10)


def labels_by_iteration(X, k, p, iters):
    """(labels, bases) after iteration 0 (the start), 1, ..., iters: lpfast's, whose labels
    equal the reference's."""
    out = []
    for it in range(iters + 1):
        r = lpfast.k_subspaces(X, k, bp.J, p, init_bases=bp.start(k), max_iter=it, tol=0.0)
        out.append((np.asarray(r.labels), np.asarray(r.bases)))
    return out


def sin_theta(history, k):
    """Per iteration, the largest principal-angle sine between a basis and its successor."""
    out = []
    for it in range(1, len(history)):
        worst = 0.0
        for c in range(k):
            A, B = history[it - 1][1][c], history[it][1][c]
            worst = max(worst, float(np.linalg.svd(B - A @ (A.T @ B), compute_uv=False)[0]))
        out.append(worst)
    return out


def work_per_iteration(history, k, p, sines):
    """Mean over the iterations of (assignment flops, Gram flops, other flops, eigensolves)."""
    n = len(history[0][0])
    d, j = bp.D, bp.J
    rows = []
    for it in range(1, len(history)):
        labels = history[it - 1][0]
        # The assignment: every row against every basis; only where no basis turned by more
        # than 30 degrees could a bound spare a row (it then needs its own distance only).
        assign = 2.0 * n * d * j * (k if sines[it - 1] > 0.5 else 1)
        if p != 2.0:
            rows.append((assign, IRLS_STEPS * n * d * d,
                         (IRLS_STEPS - 1) * 2.0 * n * d * j, IRLS_STEPS * k))
            continue
        if it == 1:  # every Gram built from its rows
            rows.append((assign, n * d * d, 0.0, k))
            continue
        was = history[it - 2][0]
        work = [min(int(np.sum(labels == c)), int(np.sum((labels == c) != (was == c))))
                for c in range(k)]
        rows.append((assign, (sum(work) - max(work)) * d * d, 0.0,
                     sum(1 for w in work if w > 0)))
    return np.mean(np.array(rows), axis=0)


def main():
    X = bp.data()
    n, d, j, iters = bp.N, bp.D, bp.J, bp.ITERS
    rate = gemm_rate()
    t_eig = eig_seconds(X)
    print(f"float32 GEMM {rate / 1e9:.0f} GFLOP/s; top-{j} eigensolve {t_eig * 1e3:.2f} ms; "
          f"{iters} iterations per case; ms per iteration:")
    print("k  p  reference  assign  Grams  other  eigs  floor  flops only  max speed-up "
          "(flops only)  sin theta by iteration")
    for p in (2.0, 1.0):
        for k in (3, 5, 10):
            t_ref = best_time(lambda: ref.k_subspaces_lloyd(X, bp.start(k), p=p, max_iter=iters,
                                                            tol=0.0, eps=bp._eps()), 2) / iters
            history = labels_by_iteration(X, k, p, iters)
            sines = sin_theta(history, k)
            assign, grams, other, n_eigs = work_per_iteration(history, k, p, sines)
            assign, grams, other = assign / rate, grams / rate, other / rate
            flops = assign + grams + other
            floor = flops + n_eigs * t_eig
            print(f"{k:<2} {p:g}  {t_ref * 1e3:9.0f}  {assign * 1e3:6.1f}  {grams * 1e3:5.1f}  "
                  f"{other * 1e3:5.1f}  {n_eigs * t_eig * 1e3:4.1f}  {floor * 1e3:5.0f}  "
                  f"{flops * 1e3:10.0f}  {t_ref / floor:8.2f}x ({t_ref / flops:.2f}x)  "
                  + " ".join(f"{v:.2g}" for v in sines), flush=True)


if __name__ == "__main__":
    if not HAVE_THREADPOOLCTL:
        print("threadpoolctl missing: NumPy's BLAS keeps its default threads")
    with limit_threads(1):
        main()
