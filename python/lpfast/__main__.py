"""Command line: ``python -m lpfast [demo|info|compress]``.

``demo`` (the default) compresses a built-in synthetic layer and times it; ``info`` prints
how the extension was built; ``compress IN.pt OUT.pt --rule PATTERN=METHOD:RATIO ...``
replaces layers of a saved torch model by lpfast's compressed layers (needs torch).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


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
    return 0


def info(args: argparse.Namespace) -> int:
    import lpfast

    print(f"lpfast {lpfast.__version__} from {lpfast.__file__}")
    print(f"OpenMP: {lpfast.has_openmp()}; threads: {lpfast.get_num_threads()}")
    print(f"NumPy {np.__version__}; Python {sys.version.split()[0]}")
    return 0


def compress(args: argparse.Namespace) -> int:
    try:
        import torch

        import lpfast.torch as lt
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rules = [lt.parse_rule(r) for r in args.rule]
    except ValueError as e:
        print(f"error: --rule: {e}", file=sys.stderr)
        return 2
    print(f"loading {args.input}")
    # A whole pickled model (torch.save(model, path)): unpickling runs code from the file,
    # so only load files you trust.
    model = torch.load(args.input, map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        print(f"error: {args.input} holds a {type(model).__name__}, not a torch.nn.Module "
              f"(save the model itself with torch.save(model, path))", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
        import lpfast

        lpfast.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        report = lt.compress(model, rules, strict=not args.allow_unmatched,
                             progress=None if args.quiet else print)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.save(model, args.output)
    print(f"\n{report}\ncompressed in {time.perf_counter() - t0:.1f} s; saved {args.output}")
    if args.report_json:
        import json

        with open(args.report_json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
        print(f"report: {args.report_json}")
    return 0


_RULE_HELP = """PATTERN=METHOD:RATIO[:key=value,...], repeatable. PATTERN is an fnmatch pattern on
module names (e.g. '*.word_embeddings'); METHOD is lowrank | projective | doped_kron;
RATIO the layer's parameter compression ratio; options e.g. p=1.0, n_subspaces=4,
a_shape=16x8, rank=2. Example: --rule '*.word_embeddings=lowrank:4:p=1.0'"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="compress and time a built-in synthetic layer (default)")
    p_demo.add_argument("--density", type=float, default=0.01, help="doping density (default 0.01)")
    p_demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="how the extension was built")
    p_comp = sub.add_parser(
        "compress", help="replace layers of a saved torch model (torch.save(model, IN.pt))",
        description="Replace nn.Linear/nn.Embedding modules of a whole-model torch.save file "
                    "by lpfast's compressed layers and save the result. Loading unpickles "
                    "the input: use trusted files only.")
    p_comp.add_argument("input", metavar="IN.pt")
    p_comp.add_argument("output", metavar="OUT.pt")
    p_comp.add_argument("--rule", action="append", required=True, help=_RULE_HELP)
    p_comp.add_argument("--report-json", metavar="PATH", help="also write the report as JSON")
    p_comp.add_argument("--allow-unmatched", action="store_true",
                        help="ignore rules that match no module (default: error)")
    p_comp.add_argument("--threads", type=int, default=0, help="threads for torch and lpfast")
    p_comp.add_argument("--quiet", action="store_true", help="no per-layer progress")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or [])])
    return {"demo": demo, "info": info, "compress": compress}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
