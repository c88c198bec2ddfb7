"""Kernels stay correct when the OpenMP runtime grants fewer threads than lpfast asks for
(OMP_THREAD_LIMIT, OMP_DYNAMIC on a loaded machine, calls from inside another parallel
region): every per-thread partial result must exist even if its thread never ran."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import lpfast

SCRIPT = textwrap.dedent("""
    import numpy as np, scipy.sparse as sp, lpfast
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 300)).astype(np.float32)
    A, B = rng.standard_normal((2, 64, 64)), rng.standard_normal((2, 64, 64))
    S = sp.random(4096, 4096, density=0.01, format="csr", random_state=0)
    x = rng.standard_normal((33, 4096))
    op = lpfast.DopedKronecker(A, B, S)

    def run():
        return [lpfast.lewis_weights(X, 1.0, max_iter=5),
                lpfast.lewis_weights(X, 1.0, method="sketch", seed=0, max_iter=5),
                lpfast.lp_subspace(X, 16, 1.0, max_iter=3).basis,
                lpfast.k_subspaces(X[:5000], 3, 8, seed=0, n_init=2).cost,
                op(x), op(x[:1])]

    lpfast.set_num_threads(2)  # more than OMP_THREAD_LIMIT allows
    asked = run()
    lpfast.set_num_threads(1)
    one = run()
    for a, b in zip(asked, one):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-3)
    print("ok")
""")


@pytest.mark.skipif(not lpfast.has_openmp(), reason="only OpenMP builds run parallel regions")
def test_smaller_team_than_asked():
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
