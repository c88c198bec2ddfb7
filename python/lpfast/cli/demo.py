"""``python -m lpfast demo`` (the default) and ``info``: a tour on built-in synthetic data."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .args import check_range
from .arrays import CliError


def _best_time(f, repeat: int = 50) -> float:
    """Best wall time of ``f()`` in seconds over ``repeat`` calls (after one warm-up)."""
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def _synthetic_layer(m1: int, n1: int, m2: int, n2: int, seed: int = 0) -> np.ndarray:
    """A weight matrix with Kronecker structure, a few large spikes and small noise:
    the shape of layer the Doping paper compresses (built-in, no download)."""
    rng = np.random.default_rng(seed)
    W = np.kron(rng.standard_normal((m1, n1)), rng.standard_normal((m2, n2)))
    W += 0.3 * np.kron(rng.standard_normal((m1, n1)), rng.standard_normal((m2, n2)))
    spikes = rng.random(W.shape) < 0.005
    W[spikes] += 5.0 * rng.standard_normal(int(spikes.sum()))
    W += 0.05 * rng.standard_normal(W.shape)
    return W.astype(np.float32)


def demo(args: argparse.Namespace) -> int:
    import lpfast

    try:
        check_range(args.density, "--density", 0.0, 1.0)
        if args.seed < 0:
            raise CliError(f"--seed: expected a seed >= 0, got {args.seed}")
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"lpfast {lpfast.__version__}: OpenMP={lpfast.has_openmp()}, threads={lpfast.get_num_threads()}")
    print("\n== Doped Kronecker compression of a 4096 x 4096 layer (built-in synthetic weights) ==")
    W = _synthetic_layer(64, 64, 64, 64, seed=args.seed)
    t0 = time.perf_counter()
    op = lpfast.doped_kp_fit(W, (64, 64), (64, 64), density=args.density, rank=2, n_iter=3)
    fit_s = time.perf_counter() - t0
    kp_only = lpfast.nearest_kronecker(W, (64, 64), (64, 64), rank=2)
    err = np.linalg.norm(W - op.to_dense()) / np.linalg.norm(W)
    err_kp = np.linalg.norm(W - kp_only.to_dense()) / np.linalg.norm(W)
    print(f"fit: {fit_s:.1f} s, {op}")
    print(f"relative error: Kronecker only {err_kp:.4f} -> doped ({args.density:.1%}) {err:.4f}")
    rng = np.random.default_rng(args.seed)
    for batch in (1, 32):
        x = rng.standard_normal((batch, W.shape[1])).astype(np.float32)
        assert np.allclose(op(x), x @ op.to_dense().T, rtol=1e-3, atol=1e-2)
        t_dense = _best_time(lambda: x @ W.T)
        t_op = _best_time(lambda: op(x))
        print(f"batch {batch:3d}: dense x @ W.T {t_dense * 1e3:7.3f} ms, "
              f"DopedKronecker {t_op * 1e3:7.3f} ms  ({t_dense / t_op:5.1f}x faster)")
    demo_robust(args.seed)
    demo_planner(args.seed)
    return 0


def _max_angle_deg(V: np.ndarray, Q: np.ndarray) -> float:
    """Largest principal angle (degrees) between span(V) and span(Q), both orthonormal."""
    s = np.linalg.svd(V.T @ Q, compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(s.min(), -1.0, 1.0))))


def demo_robust(seed: int) -> None:
    import lpfast

    n, d, k = 20000, 256, 32
    print(f"\n== Robust low-rank factorization: {n} x {d} table near a rank-{k} subspace, "
          f"5% far-away rows ==")
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    E = rng.standard_normal((n, k)) @ Q.T + 0.01 * rng.standard_normal((n, d))
    bad = rng.choice(n, n // 20, replace=False)
    E[bad] = 3.0 * rng.standard_normal((bad.size, d))
    E = E.astype(np.float32)
    for p in (2.0, 1.0):
        t0 = time.perf_counter()
        fit = lpfast.lp_subspace(E, k, p)
        secs = time.perf_counter() - t0
        name = "SVD (p=2)" if p == 2.0 else f"l{p:g} IRLS "
        print(f"{name}: largest angle to the planted subspace {_max_angle_deg(fit.basis, Q):5.2f} deg, "
              f"{fit.n_iter:3d} steps, {secs:.2f} s")


def demo_planner(seed: int) -> None:
    import lpfast

    n, d = 4000, 64
    print(f"\n== Planner: {n} x {d} vocabulary whose most used rows lie off the main subspace, "
          f"ratio 8 ==")
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, 8)) @ rng.standard_normal((8, d))
    counts = 1e6 / np.arange(1, n + 1) ** 1.1  # Zipf usage: row 0 is the most frequent
    E[:100] = 4.0 * rng.standard_normal((100, d))  # frequent tokens: far from the bulk
    E += 0.05 * rng.standard_normal((n, d))
    t0 = time.perf_counter()
    plan = lpfast.plan_compression(E.astype(np.float32), 8, weights=lpfast.usage_weights(counts),
                                   seed=seed)
    print(plan)
    print(f"planned in {time.perf_counter() - t0:.1f} s")


def info(args: argparse.Namespace) -> int:
    import lpfast

    print(f"lpfast {lpfast.__version__} from {lpfast.__file__}")
    print(f"OpenMP: {lpfast.has_openmp()}; threads: {lpfast.get_num_threads()}")
    print(f"NumPy {np.__version__}; Python {sys.version.split()[0]}")
    return 0
