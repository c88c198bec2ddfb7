"""Where the time of one batch-1 DopedKronecker call goes (4096 x 4096, 1% doping, float32).

Times, in a loop of plain calls (median and minimum, microseconds):
  op(x)         the public call: Python checks, the binding, the kernel;
  kernel        the compiled serving kernel alone (the operator's ``_native.sell_kernel``);
  kron only     such a kernel with an empty S: the Kronecker GEMMs plus call overhead;
  reference     ``lpfast.reference.doped_kp_matmul`` (NumPy reshapes + SciPy CSR).
The sparse part is about kernel - kron only; Python about op(x) - kernel.

Run: ``python bench/kron_latency.py [--threads N] [--calls N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

import lpfast
from lpfast import _native
from lpfast import reference as ref


def _times(f, calls):
    ts = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        f()
        ts[i] = time.perf_counter() - t0
    return np.median(ts) * 1e6, ts.min() * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    lpfast.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((64, 64)).astype(np.float32)
    B = rng.standard_normal((64, 64)).astype(np.float32)
    S = sp.random(4096, 4096, density=0.01, format="csr", random_state=0).astype(np.float32)
    op = lpfast.DopedKronecker(A, B, S)
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    y = np.empty((1, 4096), np.float32)
    Bt, slice_ptr, row_of, indices, data = op._sell  # noqa: SLF001 - timing the private path
    kernel = op._serve  # noqa: SLF001
    kron_only = _native.sell_kernel(A=op.A, Bt=Bt, slice_ptr=np.zeros_like(slice_ptr),
                                    row_of=row_of, indices=indices[:0], data=data[:0], bias=None)
    rows = {
        "op(x)": lambda: op(x),
        "kernel": lambda: kernel(x, y, True),
        "kron only": lambda: kron_only(x, y, True),
        "reference": lambda: ref.doped_kp_matmul(x, A, B, S),
    }
    print(f"threads={args.threads}, {args.calls} calls each (reference: a quarter), us")
    for name, f in rows.items():
        _times(f, 1000)  # warm caches and clocks
        med, best = _times(f, args.calls // 4 if name == "reference" else args.calls)
        print(f"{name:10s} median {med:7.1f}  min {best:7.1f}")


if __name__ == "__main__":
    main()
