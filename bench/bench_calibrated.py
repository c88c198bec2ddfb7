"""Benchmarks of the calibrated fits (lpfast.calibrated) and of LowRankSparseLinear.

Single thread (``limit_threads(1)``), float32, a Linear 384 -> 1536 (weight 1536 x 384, the
FFN up-projection of a MiniLM-sized encoder) with calibration inputs whose features have
skewed scales (a few 30x outliers, as in transformer activations):

* ``fit``      lowrank_fit weights-only vs whitened (rank 96), lowrank_sparse_fit (rank 80,
               1% doping, 1 round) and doped_kp_fit_calibrated (kron(32x16, 48x24) + 1%,
               2 rounds) under the input Gram; each asserts err_C no worse than the
               weights-only fit of the same structure;
* ``forward``  ``LowRankSparseLinear`` with the ratio-2 structure of
               ``params_for_ratio`` vs ``nn.Linear`` and ``LowRankLinear`` (same budget) in
               torch, and the NumPy ``LowRankSparse`` operator vs ``x @ W.T + b``, batch 1
               and 32, under ``torch.no_grad()``; each checks its output against float64.

``--benchmark-disable`` turns the file into a correctness test.

Run: ``python -m pytest bench/bench_calibrated.py --benchmark-only
--benchmark-columns=min,median,iqr,rounds``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest

import lpfast

from _threads import limit_threads

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from lpfast.torch import LowRankLinear, LowRankSparseLinear, params_for_ratio  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

SEED = 20261207
IN, OUT = 384, 1536
MAX_TIME = float(os.environ.get("LPFAST_BENCH_MAX_TIME", "0.3"))
MIN_ROUNDS = int(os.environ.get("LPFAST_BENCH_MIN_ROUNDS", "10"))
TIMING = {"min_rounds": MIN_ROUNDS, "max_time": MAX_TIME, "warmup": True,
          "warmup_iterations": 5, "disable_gc": True}
#: Allowed error relative to max |y| of the float64 computation (float32 results).
TOL = 1e-4

COMPETITORS = ("test_fit_lowrank_weights_only", "test_fit_lowrank_calibrated",
               "test_fit_lowrank_sparse_calibrated", "test_fit_doped_kron_calibrated",
               "test_torch_lowrank_sparse", "test_torch_lowrank", "test_torch_dense",
               "test_numpy_lowrank_sparse", "test_numpy_dense")


@dataclass(frozen=True)
class Case:
    kind: str   # fit | forward
    batch: int
    order: int = 0

    @property
    def id(self) -> str:
        return f"{self.kind}-b{self.batch}-f32-t1" if self.kind == "forward" else "fit-1536x384-f32-t1"


CASES = [Case("fit", 0, 0), Case("forward", 1, 1), Case("forward", 32, 2)]


def params(kind: str) -> list:
    return [pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=c.id, **TIMING))
            for c in CASES if c.kind == kind]


FIT, FORWARD = params("fit"), params("forward")


@lru_cache(maxsize=1)
def problem():
    """(W float32 (OUT, IN), bias, input Gram float64) of a random layer and skewed inputs."""
    rng = np.random.default_rng(SEED)
    W = (rng.standard_normal((OUT, IN)) / np.sqrt(IN)).astype(np.float32)
    X = rng.standard_normal((4096, IN))
    X[:, rng.choice(IN, 8, replace=False)] *= 30.0
    return W, rng.standard_normal(OUT).astype(np.float32), X.T @ X


def err(W_hat) -> float:
    W, _, C = problem()
    return lpfast.calibration_error(W, W_hat, C, relative=True)


def run_fit(benchmark, f):
    """Fits take seconds: timed once each (the spread is the machine's, see the report)."""
    with limit_threads(1):
        return benchmark.pedantic(f, rounds=1, iterations=1, warmup_rounds=0)


# -- fit ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", FIT)
def test_fit_lowrank_weights_only(benchmark, case):
    W, _, _ = problem()
    U, V = run_fit(benchmark, lambda: lpfast.lowrank_fit(W, 96))
    assert U.shape == (OUT, 96) and err((U, V)) < 1.0


@pytest.mark.parametrize("case", FIT)
def test_fit_lowrank_calibrated(benchmark, case):
    W, _, C = problem()
    U, V = run_fit(benchmark, lambda: lpfast.lowrank_fit(W, 96, input_gram=C))
    assert err((U, V)) <= err(lpfast.lowrank_fit(W, 96))


@pytest.mark.parametrize("case", FIT)
def test_fit_lowrank_sparse_calibrated(benchmark, case):
    W, _, C = problem()
    op = run_fit(benchmark, lambda: lpfast.lowrank_sparse_fit(W, 80, 0.01, input_gram=C, n_iter=1))
    assert op.fit_info["calibration_error"] <= op.fit_info["weights_only_error"]
    assert err(op) <= err(lpfast.lowrank_fit(W, 80, input_gram=C))


@pytest.mark.parametrize("case", FIT)
def test_fit_doped_kron_calibrated(benchmark, case):
    W, _, C = problem()
    args = (W, (32, 16), (48, 24), 0.01)
    op = run_fit(benchmark, lambda: lpfast.doped_kp_fit_calibrated(*args, n_iter=2, input_gram=C))
    assert err(op) <= err(lpfast.doped_kp_fit(*args, n_iter=2)) * (1 + 1e-5)


# -- forward --------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def layers():
    """Torch layers of one weight budget (ratio 2) and their NumPy counterparts, float32."""
    W, b, C = problem()
    torch.manual_seed(SEED)
    dense = nn.Linear(IN, OUT)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(W))
        dense.bias.copy_(torch.from_numpy(b))
    from lpfast.torch import fit_linear

    sparse = fit_linear(dense, "lowrank_sparse", input_gram=C, ratio=2.0, n_iter=0).eval()
    low = LowRankLinear(IN, OUT, params_for_ratio("lowrank", OUT, IN, 2.0)["rank"]).eval()
    return dense.eval(), sparse, low, sparse.to_operator()


def x_of(case: Case) -> np.ndarray:
    return np.random.default_rng(case.batch).standard_normal((case.batch, IN)).astype(np.float32)


def check(y, W_dense: np.ndarray, bias: np.ndarray, x: np.ndarray) -> None:
    want = x.astype(np.float64) @ W_dense.astype(np.float64).T + bias
    y = y.detach().numpy() if hasattr(y, "detach") else y
    assert y.dtype == np.float32
    assert np.abs(y - want).max() <= TOL * np.abs(want).max()


def run_forward(benchmark, f):
    with limit_threads(1), torch.no_grad():
        return benchmark(f)


@pytest.mark.parametrize("case", FORWARD)
def test_torch_lowrank_sparse(benchmark, case):
    _, layer, _, _ = layers()
    x = torch.from_numpy(x_of(case))
    y = run_forward(benchmark, lambda: layer(x))
    check(y, layer.dense_weight().numpy(), layer.bias.detach().numpy(), x.numpy())
    assert layer.n_params - OUT <= IN * OUT / 2


@pytest.mark.parametrize("case", FORWARD)
def test_torch_lowrank(benchmark, case):
    _, _, layer, _ = layers()
    x = torch.from_numpy(x_of(case))
    y = run_forward(benchmark, lambda: layer(x))
    check(y, layer.dense_weight().numpy(), layer.bias.detach().numpy(), x.numpy())


@pytest.mark.parametrize("case", FORWARD)
def test_torch_dense(benchmark, case):
    layer, _, _, _ = layers()
    x = torch.from_numpy(x_of(case))
    y = run_forward(benchmark, lambda: layer(x))
    check(y, layer.weight.detach().numpy(), layer.bias.detach().numpy(), x.numpy())


@pytest.mark.parametrize("case", FORWARD)
def test_numpy_lowrank_sparse(benchmark, case):
    _, _, _, op = layers()
    x = x_of(case)
    y = run_forward(benchmark, lambda: op(x))
    check(y, op.to_dense(), op.bias, x)


@pytest.mark.parametrize("case", FORWARD)
def test_numpy_dense(benchmark, case):
    W, b, _ = problem()
    x = x_of(case)
    y = run_forward(benchmark, lambda: x @ W.T + b)
    check(y, W, b, x)
