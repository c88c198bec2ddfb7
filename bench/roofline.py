"""Roofline of issue 12's two speed targets on this machine, one thread (a script, not a test).

Run: ``PYTHONPATH=python python bench/roofline.py [rounds]`` (default 5 rounds).

Measures, on one thread (OMP_NUM_THREADS=1, threadpoolctl, ``lpfast.set_num_threads(1)``),
CPU time of this process, best of ``rounds`` interleaved rounds:

1. the single-precision FMA peak as NumPy reaches it: float32 2048 x 2048 matmul
   (2 * 2048^3 flops);
2. NumPy's ``X.T @ X`` on the benchmarks' 30522 x 384 float32 outlier table
   (``bench/_data.py``, as ``bench/bench_subspace.py`` builds it), counted as
   n * d * (d + 1) flops, the lower triangle a symmetric rank update forms;
3. lpfast: ``lp_subspace(X, 64, p=2)`` (weighted Gram + top-64 eigenvectors + one cost
   pass), the Gram + eigenvectors alone (``_native.weighted_pca``), one distance pass
   (``_native.subspace_cost``) next to NumPy's ``X @ V``, and one p = 1 IRLS step
   (``_native.lp_subspace_irls`` with ``max_iter=1``);
4. NumPy's ``eigh(X.T @ X)`` top 64 and one NumPy p = 1 step (``numpy_step`` of
   ``bench_subspace.py``: distances, weights, weighted Gram, ``eigh``, distances).

Then derives each target's time budget (NumPy's time / 1.5 and / 3) and the least time
a method that forms the Gram exactly needs at the measured peak: n * d * (d + 1) flops for
p = 2; plus 2 * n * d * k for the distances an IRLS step needs for its next weights (the
eigensolve and the cost are left out, so the bound is generous). A target whose budget is
below that bound cannot be met by forming the Gram, however fast the kernel. Printed: the
measurements, the derivation, and a verdict per target; nothing here is hard-coded.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy's BLAS and lpfast load

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import lpfast  # noqa: E402
from lpfast import _native  # noqa: E402
from lpfast._validate import default_eps  # noqa: E402

from _data import SEED, outlier_table  # noqa: E402
from bench_subspace import numpy_p2, numpy_step  # noqa: E402

N, D, K = 30522, 384, 64
PEAK_N = 2048


def best_times(fns: dict, rounds: int) -> dict[str, float]:
    """Best CPU time (s) of each function over ``rounds`` rounds, the order rotated per round."""
    names = list(fns)
    for f in fns.values():
        f()  # warm-up: page faults, BLAS buffers, lazily built kernels
    best = dict.fromkeys(names, np.inf)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.process_time()
            fns[name]()
            best[name] = min(best[name], time.process_time() - t0)
    return best


def main(rounds: int) -> None:
    X = np.ascontiguousarray(outlier_table(np.random.default_rng(SEED + D), N, D),
                             dtype=np.float32)
    A = np.random.default_rng(0).standard_normal((PEAK_N, PEAK_N)).astype(np.float32)
    V0 = _native.weighted_pca(X=X, weights=None, k=K)
    eps = default_eps(X, None)
    G = X.T @ X

    def lp_step():
        return _native.lp_subspace_irls(X=X, weights=None, init=V0, p=1.0, eps=eps, tol=0.0,
                                        max_iter=1, callback=None)

    fns = {
        "numpy f32 matmul 2048^3": lambda: A @ A,
        "numpy X.T @ X": lambda: X.T @ X,
        "numpy eigh of the Gram": lambda: np.linalg.eigh(G),
        "numpy eigh(X.T @ X) top 64": lambda: numpy_p2(X, K),
        "numpy X @ V (one distance GEMM)": lambda: X @ V0,
        "numpy p=1 step": lambda: numpy_step(X, V0, 1.0, eps),
        "lpfast lp_subspace(p=2)": lambda: lpfast.lp_subspace(X, K, 2.0),
        "lpfast Gram + top-64 (weighted_pca)": lambda: _native.weighted_pca(
            X=X, weights=None, k=K),
        "lpfast one distance pass (cost)": lambda: _native.subspace_cost(
            X=X, weights=None, basis=V0, p=1.0),
        "lpfast p=1 step": lp_step,
    }
    with threadpool_limits(1):
        lpfast.set_num_threads(1)
        t = best_times(fns, rounds)

    gram_flops = N * D * (D + 1)
    dist_flops = 2 * N * D * K
    peak = 2 * PEAK_N**3 / t["numpy f32 matmul 2048^3"]
    print(f"30522 x 384 float32, k = {K}, one thread, best CPU time of {rounds} rounds\n")
    for name, s in t.items():
        print(f"  {name:38s} {s * 1e3:8.1f} ms")
    print()
    print(f"  peak (f32 matmul)              {peak / 1e9:6.1f} GFLOP/s")
    print(f"  numpy X.T @ X                  {gram_flops / t['numpy X.T @ X'] / 1e9:6.1f} GFLOP/s"
          f"  ({gram_flops / 1e9:.2f} GFLOP = n*d*(d+1))")
    print(f"  lpfast Gram + top-64           "
          f"{gram_flops / t['lpfast Gram + top-64 (weighted_pca)'] / 1e9:6.1f} GFLOP/s"
          f"  (Gram flops only; the eigensolve is in the time)")
    print(f"  numpy X @ V                    "
          f"{dist_flops / t['numpy X @ V (one distance GEMM)'] / 1e9:6.1f} GFLOP/s"
          f"  ({dist_flops / 1e9:.2f} GFLOP = 2*n*d*k)")
    print(f"  lpfast distance pass           "
          f"{dist_flops / t['lpfast one distance pass (cost)'] / 1e9:6.1f} GFLOP/s\n")

    # (target, NumPy's time, factor, [(what the bound counts, flops)], lpfast's time)
    targets = [
        ("lp_subspace(p=2) >= 1.5x numpy eigh", t["numpy eigh(X.T @ X) top 64"], 1.5,
         [("Gram only", gram_flops),
          ("Gram + the cost pass lp_subspace returns", gram_flops + dist_flops)],
         t["lpfast lp_subspace(p=2)"]),
        ("p=1 IRLS step >= 3x numpy step", t["numpy p=1 step"], 3.0,
         [("Gram + distances for the next weights", gram_flops + dist_flops)],
         t["lpfast p=1 step"]),
    ]
    for name, numpy_s, factor, bounds, ours in targets:
        budget = numpy_s / factor
        print(f"{name}:")
        print(f"  budget   numpy {numpy_s * 1e3:.1f} ms / {factor} = {budget * 1e3:.1f} ms")
        print(f"  lpfast   {ours * 1e3:.1f} ms now: {numpy_s / ours:.2f}x numpy")
        for what, flops in bounds:
            bound = flops / peak
            print(f"  bound    {what}: {flops / 1e9:.2f} GFLOP at {peak / 1e9:.1f} GFLOP/s = "
                  f"{bound * 1e3:.1f} ms")
            if bound <= budget:
                print(f"  verdict  fits only with {(budget - bound) * 1e3:.1f} ms left for all the "
                      f"rest (NumPy's eigh of the {D} x {D} Gram alone: "
                      f"{t['numpy eigh of the Gram'] * 1e3:.1f} ms)")
            else:
                print(f"  verdict  out of reach: the bound is {bound / budget:.2f}x the budget "
                      f"(at best {numpy_s / bound:.2f}x numpy)")
        print()
    block_step = 2 * dist_flops / peak
    print(f"Without the Gram: one matrix-free block step X^T (X V) costs 4*n*d*k = "
          f"{2 * dist_flops / 1e9:.2f} GFLOP ({block_step * 1e3:.1f} ms at the peak); the p = 2 "
          f"budget holds {t['numpy eigh(X.T @ X) top 64'] / 1.5 / block_step:.1f} of them "
          "(a subspace or Krylov solve of the top 64 needs several).")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
