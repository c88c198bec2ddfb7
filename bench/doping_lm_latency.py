"""Whole-model inference latency of doped LSTM language models against dense ones (issue 19,
item 4): one token per call for every sequence of the batch, state kept by the caller.

    PYTHONPATH=python python bench/doping_lm_latency.py                     # paper's size
    PYTHONPATH=python python bench/doping_lm_latency.py --checkpoints DIR   # + trained models

Competitors, in one process, interleaved (each round times every competitor back to back;
the figure is the median over rounds of the mean time per call, wall clock and process CPU
time both):
  torch        torch.nn.Embedding -> torch.nn.LSTM -> nn.Linear under torch.inference_mode,
               one step per call (the way a server generating token by token calls it);
               on CPU nn.LSTM runs oneDNN, which costs ~12 ms per single step at the
               paper's size where the weights' GEMV needs ~2 ms;
  torch_plain  the same modules with oneDNN off (``torch.backends.mkldnn.flags``): ATen's
               GEMM path, the strongest dense peer one step at a time;
  doped        the embedding row (a NumPy gather) -> ``lpfast.DopedLSTMRuntime.step`` (all
               gates of all layers in one C++ call, state updated in place) -> the decoder:
               ``lpfast.DopedKronecker`` when it is compressed, else the dense nn.Linear.
"lstm" rows time the LSTM layers alone (nn.LSTM step vs runtime step); "model" rows the
whole step, embedding and output layer included.

Paper size (the Doping paper's PTB model): 2 layers, hidden 650, vocabulary 10k, LSTM
layers 25x smaller (rank-1 Kronecker factors of ``lpfast.kron_factor_shapes`` + S at the
density bench/doping_lm.py's budget rule gives), randomly initialised (latency depends on
shapes and density only); the output layer (10k x 650, as many weights as both LSTM layers)
dense or doped-KP compressed by the same factor: both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lpfast  # noqa: E402
import doping_lm as dl  # noqa: E402
from _threads import limit_threads  # noqa: E402

DEFAULT_OUT = dl.HERE / "results" / "doping_lm_latency.json"


# -- structures ---------------------------------------------------------------------------------
def random_doped(rows: int, cols: int, density: float, rng: np.random.Generator
                 ) -> lpfast.DopedKronecker:
    """A rank-1 doped Kronecker operator of the given shape and S density, no bias."""
    (m1, n1), (m2, n2) = dl.kp_shapes(rows, cols)
    A = rng.standard_normal((1, m1, n1)).astype(np.float32) / n1 ** 0.5
    B = rng.standard_normal((1, m2, n2)).astype(np.float32) / n2 ** 0.5
    S = sp.random(rows, cols, density=density, format="csr", dtype=np.float32,
                  random_state=rng.integers(2**31)) * 0.01
    return lpfast.DopedKronecker(A, B, S)


def paper_models(H: int, V: int, layers: int, factor: float, seed: int = 0) -> dict[str, Any]:
    """Dense torch modules and doped operators of the same shapes (random weights)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = dl.plan("dopedkp_dec", factor, H, H, layers, V)
    lstm = torch.nn.LSTM(H, H, layers).eval()
    emb = torch.nn.Embedding(V, H)
    lin = torch.nn.Linear(H, V).eval()
    rt_layers = []
    for l in range(layers):
        ih = random_doped(4 * H, H, cfg["density"], rng)
        hh = random_doped(4 * H, H, cfg["density"], rng)
        bias = (lstm.state_dict()[f"bias_ih_l{l}"] + lstm.state_dict()[f"bias_hh_l{l}"]).numpy()
        rt_layers.append((ih, hh, bias.astype(np.float32)))
    runtime = lpfast.DopedLSTMRuntime(rt_layers)
    dec = random_doped(V, H, cfg["dec_density"], rng)
    dec = lpfast.DopedKronecker(dec.A, dec.B, dec.S, lin.bias.detach().numpy())
    return {"lstm": lstm, "emb": emb, "lin": lin, "runtime": runtime, "dec": dec, "cfg": cfg,
            "emb_np": emb.weight.detach().numpy()}


def trained_models(path: Path, dense_path: Path) -> dict[str, Any]:
    """The trained dense model's modules and a trained doped model's runtime (+ decoder)."""
    out: dict[str, Any] = {}
    for key, p in (("dense", dense_path), ("doped", path)):
        ck = torch.load(p, weights_only=True)
        args = argparse.Namespace(**ck["args"])
        model, cfg = dl.build(ck["method"], ck["factor"], args, ck["vocab"])
        model.load_state_dict(ck["state_dict"])  # doped layers adopt S's stored size
        out[key] = (model.eval(), cfg, ck["method"], ck["factor"])
    dense = out["dense"][0]
    doped, cfg, method, factor = out["doped"]
    res = {"lstm": dense.rnn, "emb": dense.emb, "cfg": cfg, "method": method, "factor": factor,
           "lin": _tied_linear(dense), "runtime": runtime_of(doped.rnn),
           "emb_np": doped.emb.weight.detach().numpy()}
    res["dec"] = (doped.decoder.to_operator() if doped.decoder is not None
                  else _tied_linear(doped))
    # The served step must be the trained model's own: one token through both.
    x = torch.randn(1, 3, doped.rnn.input_size)
    with torch.no_grad():
        want, _ = doped.rnn(x)
    z = np.zeros((doped.rnn.num_layers, 3, doped.rnn.hidden_size), np.float32)
    got, _, _ = res["runtime"].step(x[0].numpy(), z, z)
    np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-4, atol=1e-5)
    return res


def _tied_linear(model: dl.LM) -> torch.nn.Linear:
    lin = torch.nn.Linear(model.emb.weight.shape[1], model.emb.weight.shape[0]).eval()
    with torch.no_grad():
        if model.decoder is None:
            lin.weight.copy_(model.emb.weight)
            lin.bias.copy_(model.dec_bias)
        else:
            lin.weight.copy_(model.decoder.dense_weight())
            lin.bias.copy_(model.decoder.bias)
    return lin


def runtime_of(rnn: torch.nn.Module) -> lpfast.DopedLSTMRuntime:
    """The trained DopedLSTM's C++ inference runtime: gate matrices without their biases,
    b_ih + b_hh per layer (DOPING.md's interface)."""
    if hasattr(rnn, "runtime"):
        return rnn.runtime()
    layers = []
    for l in range(rnn.num_layers):
        ih, hh = getattr(rnn, f"ih{l}"), getattr(rnn, f"hh{l}")
        bias = (ih.bias + hh.bias).detach().numpy()
        layers.append((ih.to_operator(bias=False), hh.to_operator(bias=False), bias))
    return lpfast.DopedLSTMRuntime(layers)


# -- timing -------------------------------------------------------------------------------------
def competitors(m: dict[str, Any], batch: int, seed: int = 0
                ) -> dict[str, dict[str, Callable[[], Any]]]:
    """{"lstm": {name: f}, "model": {name: f}}: each f one step of a batch, for
    "torch" (torch.nn.LSTM as it runs by default: oneDNN on CPU), "torch_plain" (the same
    module with oneDNN off: ATen's GEMM path, several times faster per single step) and
    "doped" (DopedLSTMRuntime)."""
    H = m["lstm"].hidden_size
    L = m["lstm"].num_layers
    V = m["emb"].weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (1, batch), generator=g)
    tok_np = tokens.numpy()[0]
    x_t = torch.randn(1, batch, H, generator=g)
    x_np = x_t[0].numpy().copy()
    zeros = torch.zeros(L, batch, H)
    st = {"h": zeros.clone(), "c": zeros.clone()}
    lstm, emb, lin, rt, dec, emb_np = (m[k] for k in ("lstm", "emb", "lin", "runtime", "dec",
                                                      "emb_np"))

    def torch_lstm():
        with torch.inference_mode():
            _, (st["h"], st["c"]) = lstm(x_t, (st["h"], st["c"]))

    def torch_model():
        with torch.inference_mode():
            out, (st["h"], st["c"]) = lstm(emb(tokens), (st["h"], st["c"]))
            return lin(out[0])

    def plain(f):
        def g():  # (mkldnn.flags() would also reset TF32 and warn on every call)
            torch.backends.mkldnn.enabled = False
            try:
                return f()
            finally:
                torch.backends.mkldnn.enabled = True
        return g

    y_np = np.empty((batch, H), np.float32)
    hn, cn = zeros.numpy().copy(), zeros.numpy().copy()

    def doped_lstm():  # a server's call: the state updated in place, no allocation
        rt.step(x_np, hn, cn, out=(y_np, hn, cn))

    if isinstance(dec, torch.nn.Linear):
        def decode(y):
            with torch.inference_mode():
                return dec(torch.from_numpy(y))
    else:
        decode = dec

    def doped_model():
        rt.step(emb_np[tok_np], hn, cn, out=(y_np, hn, cn))
        return decode(y_np)

    return {"lstm": {"torch": torch_lstm, "torch_plain": plain(torch_lstm), "doped": doped_lstm},
            "model": {"torch": torch_model, "torch_plain": plain(torch_model),
                      "doped": doped_model}}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, seconds: float
                ) -> dict[str, dict[str, float]]:
    """Per competitor, the median over ``rounds`` of the mean wall-clock and process CPU
    seconds per call; every round runs each competitor for about ``seconds`` back to back.
    On a shared machine the wall clock includes waiting for a core; the CPU time (one
    thread) does not."""
    calls = {}
    for name, f in fns.items():
        f()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 4 or n < 3:
            f()
            n += 1
        calls[name] = max(int(n * seconds / (time.perf_counter() - t0 + 1e-9)), 3)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            n = calls[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                f()
            wall[name].append((time.perf_counter() - t0) / n)
            cpu[name].append((time.process_time() - c0) / n)
    return {k: {"wall": float(np.median(wall[k])), "cpu": float(np.median(cpu[k]))}
            for k in fns}


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def measure(label: str, m: dict[str, Any], batches: list[int], threads: list[int],
            rounds: int, seconds: float, log: Callable[[str], None],
            parts: tuple[str, ...] = ("lstm", "model")) -> list[dict[str, Any]]:
    rows = []
    for t in threads:
        with limit_threads(t):
            for b in batches:
                for part, fns in competitors(m, b).items():
                    if part not in parts:
                        continue
                    r = interleaved(fns, rounds, seconds)
                    row = {"model": label, "part": part, "batch": b, "threads": t,
                           "load": _load()}
                    for k, v in r.items():
                        row[f"{k}_us"] = 1e6 * v["wall"]
                        row[f"{k}_cpu_us"] = 1e6 * v["cpu"]
                    for k in ("torch", "torch_plain"):
                        row[f"speedup_{k}"] = r[k]["wall"] / r["doped"]["wall"]
                        row[f"speedup_{k}_cpu"] = r[k]["cpu"] / r["doped"]["cpu"]
                    rows.append(row)
                    log(f"{label:34s} {part:5s} b{b:<3d} t{t}: torch {row['torch_us']:9.0f} "
                        f"plain {row['torch_plain_us']:9.0f} doped {row['doped_us']:8.0f} us "
                        f"(cpu {row['torch_cpu_us']:.0f}/{row['torch_plain_cpu_us']:.0f}/"
                        f"{row['doped_cpu_us']:.0f}) x{row['speedup_torch']:.2f} "
                        f"x{row['speedup_torch_plain']:.2f} load {row['load']:.1f}")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown; one thread also gets the speed-ups in process CPU time (the load-free
    figure on a shared machine: ``cpu``)."""
    lines = ["| model | part | batch | threads | torch.nn.LSTM us | oneDNN off us | doped us | "
             "speed-up vs torch | vs oneDNN off | CPU-time speed-ups (1 thread) | load |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        cpu = (f"{r['speedup_torch_cpu']:.1f}x / {r['speedup_torch_plain_cpu']:.1f}x"
               if r["threads"] == 1 else "")
        lines.append(f"| {r['model']} | {r['part']} | {r['batch']} | {r['threads']} | "
                     f"{r['torch_us']:.0f} | {r['torch_plain_us']:.0f} | {r['doped_us']:.0f} | "
                     f"{r['speedup_torch']:.1f}x | {r['speedup_torch_plain']:.1f}x | {cpu} | "
                     f"{r['load']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None, log: Callable[[str], None] = print
         ) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=650)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--factor", type=float, default=25.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.2, help="per competitor and round")
    ap.add_argument("--checkpoints", help="bench/doping_lm.py --save-dir: time its trained "
                    "dopedkp / dopedkp_dec models against its dense one too")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.factor <= 1:
        ap.error("need --rounds >= 1, --seconds > 0, --factor > 1")
    rows: list[dict[str, Any]] = []
    m = paper_models(args.hidden, args.vocab, args.layers, args.factor)
    size = f"H{args.hidden} V{args.vocab} {args.factor:g}x"
    info = {"paper": {"hidden": args.hidden, "vocab": args.vocab, "layers": args.layers,
                      "factor": args.factor, "lstm_density": m["cfg"]["density"],
                      "decoder_density": m["cfg"]["dec_density"]}}
    rows += measure(f"paper {size}, doped decoder", m, args.batches, args.threads, args.rounds,
                    args.seconds, log)
    m_dense_dec = dict(m, dec=m["lin"])
    rows += measure(f"paper {size}, dense decoder", m_dense_dec, args.batches, args.threads,
                    args.rounds, args.seconds, log, parts=("model",))
    if args.checkpoints:
        d = Path(args.checkpoints)
        dense = d / "dense_1x.pt"
        for p in sorted(d.glob("dopedkp*_*x.pt")):
            if "nocmr" in p.name:
                continue
            tm = trained_models(p, dense)
            rows += measure(f"trained {p.stem}", tm, args.batches, args.threads, args.rounds,
                            args.seconds, log)
    result = {"info": info, "torch": torch.__version__, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(table(rows))
    log(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
