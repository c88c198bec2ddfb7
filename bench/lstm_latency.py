"""Latency of one LSTM step at the Doping paper's size: lpfast.DopedLSTMRuntime against
torch.nn.LSTM (dense, same function), interleaved in one process, as a markdown table.

The model is bench/_lstm_paper.py's (2 layers, input 650, hidden 650, rank-1 Kronecker
factors + random S at ~25x and ~10x compression of the LSTM weights; see there how stored
parameters are counted). Per case (compression, batch, threads) the two competitors run in
alternating rounds of ``--calls`` calls each, so both see the same machine load; the table
gives the median and minimum over rounds of the per-call time and the ratio torch / lpfast
of the medians (> 1: lpfast is faster). torch runs twice: as configured by default (its CPU
LSTM goes through oneDNN) and with ``torch.backends.mkldnn`` disabled (torch's own kernels,
faster at batch 1 here); the ratio is taken against the faster of the two. Both outputs are checked against a float64 step of
the dense reference before timing.

Run: ``python bench/lstm_latency.py [--rounds 30] [--calls 200] [--compressions 25 10]
[--batches 1 32] [--threads 1 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lpfast  # noqa: E402
from _lstm_paper import expected_step, mkldnn_enabled, paper_model, step_inputs, torch_lstm  # noqa: E402
from _threads import limit_threads  # noqa: E402


#: ``--clock``: wall time, or the process's CPU time, which on a machine shared with other
#: jobs leaves out the time this process waited for a core (at 1 thread it is the call's
#: own run time; at 2 threads it sums both threads, so it is no latency: use wall there).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def _per_call(f, calls):
    t0 = clock()
    for _ in range(calls):
        f()
    return (clock() - t0) / calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--compressions", type=float, nargs="+", default=[25.0, 10.0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--hidden", type=int, default=650)
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    args = ap.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    import torch

    print(f"lpfast {lpfast.__version__}, torch {torch.__version__}, loadavg "
          f"{os.getloadavg()[0]:.2f} at start; {args.rounds} rounds x {args.calls} calls, "
          f"{args.clock} clock", flush=True)
    print(flush=True)
    print("| compression | nnz | batch | threads | lpfast us (median / min) "
          "| torch us (median / min) | torch no-oneDNN us (median / min) "
          "| best torch / lpfast |")
    print("|---|---|---|---|---|---|---|---|")
    for comp in args.compressions:
        model = paper_model(comp, input_size=args.hidden, hidden=args.hidden)
        net = torch_lstm(model)
        rt = model.runtime
        for batch in args.batches:
            x, h, c = step_inputs(model, batch)
            want = expected_step(model, x, h, c)
            xt = torch.from_numpy(x)[None]
            state = (torch.from_numpy(h), torch.from_numpy(c))
            for threads in args.threads:
                with limit_threads(threads), torch.inference_mode():
                    got_l = rt.step(x, h, c)
                    for g, w in zip(got_l, want):
                        np.testing.assert_allclose(g, w, rtol=0, atol=2e-4)
                    for mkldnn in (True, False):
                        with mkldnn_enabled(mkldnn):
                            y, (hn, cn) = net(xt, state)
                        for g, w in zip((y[0].numpy(), hn.numpy(), cn.numpy()), want):
                            np.testing.assert_allclose(g, w, rtol=0, atol=2e-4)

                    def fn():
                        with mkldnn_enabled(False):
                            for _ in range(args.calls):
                                net(xt, state)

                    funcs = {"lpfast": lambda: rt.step(x, h, c),
                             "torch": lambda: net(xt, state)}
                    times = {k: [] for k in (*funcs, "native")}
                    for k, f in funcs.items():
                        _per_call(f, args.calls)  # warm caches and clocks
                    for _ in range(args.rounds):
                        for k, f in funcs.items():
                            times[k].append(_per_call(f, args.calls))
                        t0 = clock()
                        fn()
                        times["native"].append((clock() - t0) / args.calls)
                med = {k: np.median(v) * 1e6 for k, v in times.items()}
                low = {k: np.min(v) * 1e6 for k, v in times.items()}
                best = min(med["torch"], med["native"])
                print(f"| {model.compression:.1f}x | {model.nnz} | {batch} | {threads} "
                      f"| {med['lpfast']:.1f} / {low['lpfast']:.1f} "
                      f"| {med['torch']:.1f} / {low['torch']:.1f} "
                      f"| {med['native']:.1f} / {low['native']:.1f} "
                      f"| {best / med['lpfast']:.2f} |", flush=True)
    print()
    print(f"loadavg {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
