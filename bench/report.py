"""Markdown table of the doped-Kronecker benchmarks (bench/bench_kron.py).

Runs the benchmarks and summarizes them, or summarizes a saved ``--benchmark-json`` file:

    python bench/report.py                          # run the default set, print the table
    python bench/report.py --save kron.json         # ... and keep the raw JSON
    python bench/report.py --json kron.json         # only summarize a saved run
    LPFAST_BENCH_FULL=1 python bench/report.py      # the full grid
    python bench/report.py -- -k "f32"              # extra arguments go to pytest
    python bench/report.py --json kron.json --stat min   # best round instead of median

Per case: median (or ``--stat min``) time (ms) of each competitor, the time ratios
lpfast/reference and lpfast/dense NumPy (< 1: lpfast is faster), and how close the
prepared lpfast operator comes to a roofline (ideal time / measured time):

* batch 1 (bandwidth bound): bytes moved = the operator's A, B, S data + indices + indptr
  (in the layout the call reads: SELL at batch 1, CSR for batches) + x + y, over DRAM_BANDWIDTH and over L3_BANDWIDTH;
* batch >= 32 (compute bound): flops = 2*N*R*n1*m2*(n2 + m1) + 2*N*nnz over
  PEAK_FLOPS_PER_CORE[dtype] * threads. The same peak is applied to the dense NumPy GEMM
  (2*N*m*n flops) as a sanity check of the peak figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# -- machine constants (2-core AMD EPYC Zen 4 VM) -----------------------------------------
DRAM_BANDWIDTH = 30e9    # bytes/s, sustained DRAM bandwidth
L3_BANDWIDTH = 100e9     # bytes/s, L3 bandwidth
#: flop/s per core: Zen 4, 2 x 256-bit FMA pipes at ~3.4 GHz -> 16 fp32 FMA/cycle.
PEAK_FLOPS_PER_CORE = {"float32": 110e9, "float64": 55e9}
BATCH_COMPUTE_BOUND = 32  # batches >= this get the flop roofline, batch 1 the byte one
NOISY_IQR = 0.25          # flag medians whose interquartile range exceeds this fraction

HERE = Path(__file__).resolve().parent
COLUMNS = ("lpfast", "lpfast one-shot", "reference", "numpy dense", "torch dense")


def run_benchmarks(json_path: Path, pytest_args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pytest", str(HERE / "bench_kron.py"), "--benchmark-only",
           "-q", f"--benchmark-json={json_path}", *pytest_args]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    # pytest's own table goes to stderr so that stdout holds only the markdown.
    done = subprocess.run(cmd, cwd=HERE.parent, stdout=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"pytest failed with exit code {done.returncode}")


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3g}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.3g}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.0f}%"


def _load(loads: list[float]) -> str:
    return f"{max(loads):.1f}" if loads else ""


def rooflines(info: dict, t: float) -> dict[str, float | None]:
    """Fractions of the byte (DRAM, L3) or flop roofline reached in time ``t``."""
    N, threads = info["batch"], info["threads"]
    m1, n1, m2, n2, rank, nnz = (info[k] for k in ("m1", "n1", "m2", "n2", "rank", "nnz"))
    out: dict[str, float | None] = {"dram": None, "l3": None, "flop": None}
    if N < BATCH_COMPUTE_BOUND:
        moved = info["operator_nbytes"] + info["x_nbytes"] + info["y_nbytes"]
        out["dram"] = moved / DRAM_BANDWIDTH / t
        out["l3"] = moved / L3_BANDWIDTH / t
    else:
        flops = 2 * N * rank * n1 * m2 * (n2 + m1) + 2 * N * nnz
        out["flop"] = flops / (PEAK_FLOPS_PER_CORE[info["dtype"]] * threads) / t
    return out


def dense_flop_fraction(info: dict, t: float | None) -> float | None:
    if t is None or info["batch"] < BATCH_COMPUTE_BOUND:
        return None
    flops = 2 * info["batch"] * info["m1"] * info["m2"] * info["n1"] * info["n2"]
    return flops / (PEAK_FLOPS_PER_CORE[info["dtype"]] * info["threads"]) / t


def table(data: dict, stat: str = "median") -> str:
    cases: dict[str, dict] = {}
    noisy = []
    for b in data["benchmarks"]:
        info, stats = b["extra_info"], b["stats"]
        if "competitor" not in info:
            continue
        entry = cases.setdefault(info["case"], {"info": info, "t": {}, "load": []})
        if "loadavg_1min" in info:
            entry["load"].append(info["loadavg_1min"])
        entry["t"][info["competitor"]] = stats[stat]
        if stats["iqr"] > NOISY_IQR * stats["median"]:
            noisy.append(f"{info['case']} {info['competitor']} "
                         f"(IQR {100 * stats['iqr'] / stats['median']:.0f}% of median)")

    def order(item):
        i = item[1]["info"]
        return (i["m1"] * i["m2"] * i["n1"] * i["n2"], i["m1"] * i["m2"], i["density"],
                i["dtype"], i["batch"], i["threads"])

    head = ["case (W, density, batch, dtype, threads)", *(f"{c} ms" for c in COLUMNS),
            "lpfast/ref", "lpfast/numpy", "%DRAM roof", "%L3 roof", "%FLOP roof",
            "numpy %FLOP", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    for case, entry in sorted(cases.items(), key=order):
        info, t = entry["info"], entry["t"]
        lp = t.get("lpfast")
        roof = rooflines(info, lp) if lp else {"dram": None, "l3": None, "flop": None}
        row = [case, *(_ms(t.get(c)) for c in COLUMNS),
               _ratio(lp, t.get("reference")), _ratio(lp, t.get("numpy dense")),
               _pct(roof["dram"]), _pct(roof["l3"]), _pct(roof["flop"]),
               _pct(dense_flop_fraction(info, t.get("numpy dense"))), _load(entry["load"])]
        lines.append("| " + " | ".join(row) + " |")
    if noisy:
        lines += ["", "Noisy medians (IQR > {:.0f}% of the median): ".format(100 * NOISY_IQR)
                  + "; ".join(noisy) + "."]
    return "\n".join(lines)


def header(data: dict, stat: str = "median") -> str:
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {})
    extra = mi.get("lpfast_bench", {})
    pools = extra.get("threadpools")
    pools_txt = ("threadpoolctl missing: BLAS threads NOT limited" if pools is None else
                 ", ".join(f"{p['internal_api']}" for p in pools))
    loads = [b["extra_info"]["loadavg_1min"] for b in data["benchmarks"]
             if "loadavg_1min" in b["extra_info"]]
    load_txt = (f" 1-min load average during the run: {min(loads):.1f}-{max(loads):.1f} "
                f"(the benchmark itself adds up to its thread count)." if loads else "")
    return (f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical CPUs; "
            f"Python {mi.get('python_version', '?')}; lpfast {extra.get('lpfast', '?')} "
            f"(OpenMP {extra.get('lpfast_openmp', '?')}), numpy {extra.get('numpy', '?')}, "
            f"scipy {extra.get('scipy', '?')}, torch {extra.get('torch', '?')}; "
            f"thread pools: {pools_txt}. Run {data.get('datetime', '?')}.{load_txt}\n"
            f"Times: {stat} over rounds, ms. Ratios are time ratios (< 1: lpfast faster). "
            f"Roofline: DRAM {DRAM_BANDWIDTH / 1e9:g} GB/s, L3 {L3_BANDWIDTH / 1e9:g} GB/s "
            f"(batch < {BATCH_COMPUTE_BOUND}); {PEAK_FLOPS_PER_CORE['float32'] / 1e9:g} "
            f"GFLOP/s/core fp32, {PEAK_FLOPS_PER_CORE['float64'] / 1e9:g} fp64 "
            f"(batch >= {BATCH_COMPUTE_BOUND}). load: highest 1-min load average seen in the "
            f"case's group; above the core count, other processes shared the cores.\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="summarize this saved run instead of running")
    parser.add_argument("--save", type=Path, help="where to write the raw JSON of a new run")
    parser.add_argument("--stat", default="median", choices=("median", "min", "mean"),
                        help="statistic of the timed rounds to report (default: median)")
    args = parser.parse_args(argv)

    if args.json is not None:
        path = args.json
    else:
        if args.save is not None:
            path = args.save.resolve()
        else:
            fd, name = tempfile.mkstemp(prefix="lpfast-bench-", suffix=".json")
            os.close(fd)
            path = Path(name)
        run_benchmarks(path, pytest_args)
        print(f"raw results: {path}", file=sys.stderr)
    data = json.loads(path.read_text())
    print(header(data, args.stat))
    print(table(data, args.stat))


if __name__ == "__main__":
    main()
