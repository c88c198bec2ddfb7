"""Benchmarks of one LSTM step at the Doping paper's size: ``lpfast.DopedLSTMRuntime.step``
against ``torch.nn.LSTM`` (dense, same sizes, the same function: its weights are the doped
model's dense W).

The model (bench/_lstm_paper.py): 2 layers, input 650, hidden 650 (gate matrices 2600 x 650
for W_ih and W_hh), rank-1 Kronecker factors from ``lpfast.kron_factor_shapes`` and a
random S as dense as the budget allows at ~25x and ~10x compression of the LSTM weights
(one 32-bit value + one 32-bit index per non-zero, plus the row pointer).

One pytest-benchmark group per case (compression, batch, threads), each holding:

* ``test_lpfast_step``  ``rt.step(x, h, c)``: one compiled call for all gates of all layers;
* ``test_torch_step``   ``lstm(x_t, (h, c))`` with x_t (1, batch, 650), one step per call,
  under ``torch.inference_mode()``; ``torch.set_num_threads`` = the case's threads;
* ``test_torch_step_native``  the same with ``torch.backends.mkldnn`` disabled: torch's
  default CPU LSTM goes through oneDNN, which at batch 1 was several times slower than
  torch's own kernels on this machine, so both are timed and the faster one is the baseline.

Every benchmark checks its (y, h, c) against a float64 step of the dense reference
(``lpfast.reference.doped_lstm_forward``), so ``--benchmark-disable`` makes this a test (it
then uses hidden 64 to stay quick). ``python bench/lstm_latency.py`` prints the same
comparison as a table of interleaved timings and ratios.

Run: ``python -m pytest bench/bench_lstm.py --benchmark-only``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest

import _timing
from _lstm_paper import expected_step, mkldnn_enabled, paper_model, step_inputs, torch_lstm
from _threads import limit_threads

try:
    import torch
except ImportError:  # torch is optional
    torch = None

COMPRESSIONS = (25.0, 10.0)
BATCHES = (1, 32)
THREADS = (1, 2)
#: The paper's size when timing; a small model with the same structure when checking.
SIZE = _timing.size(650, 64)
MAX_TIME = float(os.environ.get("LPFAST_BENCH_MAX_TIME", "0.5"))
MIN_ROUNDS = int(os.environ.get("LPFAST_BENCH_MIN_ROUNDS", "20"))
TOL = 2e-4  # float32 step against the float64 reference, absolute (h, c are O(1))

COMPETITORS = ("test_lpfast_step", "test_torch_step", "test_torch_step_native")


@dataclass(frozen=True)
class Case:
    compression: float
    batch: int
    threads: int
    order: int = 0

    @property
    def id(self) -> str:
        return f"lstm{SIZE}-x{self.compression:g}-b{self.batch}-t{self.threads}"


CASES = [Case(c, b, t, order=i)
         for i, (c, b, t) in enumerate(itertools.product(COMPRESSIONS, BATCHES, THREADS))]
TIMING = {"min_rounds": MIN_ROUNDS, "max_time": MAX_TIME, "warmup": True,
          "warmup_iterations": 200, "disable_gc": True}
PARAMS = [pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=c.id, **TIMING))
          for c in CASES]


@lru_cache(maxsize=1)
def model(compression: float):
    return paper_model(compression, input_size=SIZE, hidden=SIZE)


@lru_cache(maxsize=1)
def lstm(compression: float):
    return torch_lstm(model(compression))


@lru_cache(maxsize=4)
def case_data(compression: float, batch: int):
    m = model(compression)
    x, h, c = step_inputs(m, batch)
    return (x, h, c), expected_step(m, x, h, c)


def check(got, case: Case) -> None:
    _, want = case_data(case.compression, case.batch)
    for g, w in zip(got, want):
        if torch is not None and isinstance(g, torch.Tensor):
            g = g.numpy()
        g = np.asarray(g).reshape(w.shape)
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=0, atol=TOL)


def info(benchmark, case: Case, label: str) -> None:
    m = model(case.compression)
    benchmark.extra_info.update(competitor=label, case=case.id, compression=case.compression,
                                achieved_compression=m.compression, nnz=m.nnz, hidden=SIZE,
                                batch=case.batch, threads=case.threads)


@pytest.mark.parametrize("case", PARAMS)
def test_lpfast_step(benchmark, case):
    rt = model(case.compression).runtime
    (x, h, c), _ = case_data(case.compression, case.batch)
    info(benchmark, case, "lpfast")
    with limit_threads(case.threads):
        got = benchmark(rt.step, x, h, c)
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    check(got, case)


def _torch_step(benchmark, case: Case, label: str, mkldnn: bool) -> None:
    net = lstm(case.compression)
    (x, h, c), _ = case_data(case.compression, case.batch)
    xt = torch.from_numpy(x)[None]  # (1, batch, I): one step, sequence-first
    state = (torch.from_numpy(h), torch.from_numpy(c))
    info(benchmark, case, label)

    def step():
        y, (hn, cn) = net(xt, state)
        return y[0], hn, cn

    with (limit_threads(case.threads), torch.inference_mode(),
          mkldnn_enabled(mkldnn)):
        got = benchmark(step)
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    check(got, case)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("case", PARAMS)
def test_torch_step(benchmark, case):
    _torch_step(benchmark, case, "torch dense", mkldnn=True)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("case", PARAMS)
def test_torch_step_native(benchmark, case):
    _torch_step(benchmark, case, "torch dense, no oneDNN", mkldnn=False)
