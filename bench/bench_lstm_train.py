"""Training-step time of ``lpfast.torch.DopedLSTM`` against ``torch.nn.LSTM`` of the same size.

One step = zero_grad, forward of a (T=35, batch=20, H) sequence through 2 layers, a
mean-square loss on the output, backward, ``optimizer.step()`` (SGD), float32, one thread.
DopedLSTM forms each gate matrix W = A (x) B + S densely once per forward and runs torch's
fused LSTM with it (``lpfast/torch/doped_lstm.py``), so its step is nn.LSTM's plus forming
the weights and the chain rule back to A, B and S's values. Cases: hidden 256 and 650 (the
Doping paper's LM size), S at density 1.0 (where sparsity annealing starts; the largest
scatter) and 0.01 (where it ends), CMR 0.3 (dropout on S's values) on.

Two ways to run:
* ``python -m pytest bench/bench_lstm_train.py --benchmark-only
  --benchmark-columns=min,median,iqr,rounds``: one pytest-benchmark group per case, both
  competitors back to back (conftest.py orders them);
* ``python bench/bench_lstm_train.py [--hidden 256 650] [--steps 20]``: the two models'
  steps interleaved one by one in one loop (both see the same machine load), printing the
  median step times and their ratio.

Without timing options (the project's test run) each benchmark runs once at a small size
and checks that DopedLSTM's forward equals nn.LSTM's holding the same dense weights.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from lpfast.torch import DopedLSTM  # noqa: E402

import _timing  # noqa: E402
from _threads import limit_threads  # noqa: E402

SEED = 20261207
T, BATCH, LAYERS, CMR, LR = 35, 20, 2, 0.3, 0.1
MAX_TIME = float(os.environ.get("LPFAST_BENCH_MAX_TIME", "2.0"))
MIN_ROUNDS = int(os.environ.get("LPFAST_BENCH_MIN_ROUNDS", "5"))
TIMING = {"min_rounds": MIN_ROUNDS, "max_time": MAX_TIME, "warmup": True,
          "warmup_iterations": 2, "disable_gc": True}

#: Competitors in the order they run within a group (conftest.py sorts by this).
COMPETITORS = ("test_doped_lstm_step", "test_torch_lstm_step")


@dataclass(frozen=True)
class Case:
    hidden: int
    density: float
    order: int = 0

    @property
    def id(self) -> str:
        return f"train-h{self.hidden}-d{self.density:g}-f32-t1"


CASES = [Case(_timing.size(h, 16), d, order=i)
         for i, (h, d) in enumerate([(256, 1.0), (256, 0.01), (650, 1.0), (650, 0.01)])]


def models(hidden: int, density: float) -> tuple[DopedLSTM, nn.LSTM, torch.Tensor]:
    """A DopedLSTM (random factors, random S values), a torch.nn.LSTM of the same size
    (its own random weights: the step's cost does not depend on them), and an input."""
    torch.manual_seed(SEED)
    doped = DopedLSTM(hidden, hidden, LAYERS, density=density, cmr=CMR)
    with torch.no_grad():
        for _, g in doped.matrices():
            g.S_values.normal_(0, 0.01)
    dense = nn.LSTM(hidden, hidden, LAYERS)
    x = torch.randn(T, BATCH, hidden, generator=torch.Generator().manual_seed(SEED))
    return doped, dense, x


def stepper(model: nn.Module, x: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        y, _ = model(x)
        loss = y.square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def check_forward(doped: DopedLSTM, x: torch.Tensor) -> None:
    """DopedLSTM computes nn.LSTM with its dense weights (CMR off, as in eval)."""
    doped.eval()
    with torch.no_grad():
        got, want = doped(x)[0], doped.to_lstm()(x)[0]
    doped.train()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def params(case_list=CASES) -> list:
    return [pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=c.id, **TIMING))
            for c in case_list]


def run(benchmark, case: Case, label: str, model: nn.Module, x: torch.Tensor) -> float:
    benchmark.extra_info.update(competitor=label, case=case.id, hidden=case.hidden,
                                density=case.density, seq=T, batch=BATCH, layers=LAYERS,
                                threads=1, dtype="float32")
    with limit_threads(1):
        loss = benchmark(stepper(model, x))
    benchmark.extra_info["loadavg_1min"] = os.getloadavg()[0]
    assert np.isfinite(loss)
    return loss


@pytest.mark.parametrize("case", params())
def test_doped_lstm_step(benchmark, case):
    doped, _, x = models(case.hidden, case.density)
    check_forward(doped, x)
    run(benchmark, case, "DopedLSTM", doped, x)
    assert all(p.grad is not None for p in doped.parameters())


@pytest.mark.parametrize("case", params())
def test_torch_lstm_step(benchmark, case):
    _, dense, x = models(case.hidden, case.density)
    run(benchmark, case, "torch.nn.LSTM", dense, x)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 650])
    ap.add_argument("--density", type=float, nargs="+", default=[1.0, 0.01])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model (after 3 warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"2 layers, seq {T}, batch {BATCH}, float32, {args.threads} thread(s), SGD, "
          f"CMR {CMR}; median ms per training step, steps interleaved; wall clock and the "
          f"process CPU time (which leaves out waits for a core on a loaded machine)")
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    with limit_threads(args.threads):
        for hidden in args.hidden:
            for density in args.density:
                doped, dense, x = models(hidden, density)
                check_forward(doped, x)
                steps = {"DopedLSTM": stepper(doped, x), "nn.LSTM": stepper(dense, x)}
                times = {(k, c): [] for k in steps for c in clocks}
                for i in range(args.steps + 3):
                    for name, step in steps.items():
                        t0 = {c: f() for c, f in clocks.items()}
                        step()
                        if i >= 3:
                            for c, f in clocks.items():
                                times[name, c].append(f() - t0[c])
                med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
                cols = "  ".join(
                    f"{c}: DopedLSTM {med['DopedLSTM', c]:7.1f} nn.LSTM {med['nn.LSTM', c]:7.1f} "
                    f"ratio {med['DopedLSTM', c] / med['nn.LSTM', c]:.2f}" for c in clocks)
                print(f"H={hidden:4d} density={density:<5g} {cols}  (loadavg {os.getloadavg()[0]:.1f})")

if __name__ == "__main__":
    main()
