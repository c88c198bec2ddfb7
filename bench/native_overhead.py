"""Per-call cost of the ways to reach a compiled kernel: ``_core`` positionally, ``_core``
by keyword (pybind11 matches keywords against every overload), and ``lpfast._native``.

Run: ``PYTHONPATH=python python bench/native_overhead.py``. Prints the best of 5 x 20000
calls of a 2 x 16 float64 doped Kronecker product (the kernel's own work is ~1 us), in us.
"""

from __future__ import annotations

import timeit

import numpy as np

from lpfast import _core, _native


def main() -> None:
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((1, 4, 4)), rng.standard_normal((1, 4, 4))
    x, out = rng.standard_normal((2, 16)), np.empty((2, 16))
    ways = {
        "_core, positional": lambda: _core.doped_kron_matmul(x, A, B, None, None, None, None,
                                                             out, False),
        "_core, keywords": lambda: _core.doped_kron_matmul(
            x=x, A=A, B=B, indptr=None, indices=None, data=None, bias=None, out=out,
            check_finite=False),
        "_native, keywords": lambda: _native.doped_kron_matmul(
            x=x, A=A, B=B, indptr=None, indices=None, data=None, bias=None, out=out),
    }
    for name, f in ways.items():
        best = min(timeit.repeat(f, number=20000, repeat=5)) / 20000
        print(f"{name:20s} {best * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
