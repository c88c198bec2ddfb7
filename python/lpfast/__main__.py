"""Command line: ``python -m lpfast [demo|info|compress|plan]``.

``demo`` (the default) compresses a built-in synthetic layer and times it; ``info`` prints
how the extension was built; ``compress IN.pt OUT.pt --rule PATTERN=METHOD:RATIO ...``
replaces layers of a saved torch model by lpfast's compressed layers (needs torch; METHOD
``auto`` runs the planner and prints its table); ``plan IN[:NAME] --ratio R`` ranks the
compression methods on one matrix and can plot error vs compression ratio (``--plot``,
needs matplotlib: ``pip install "lpfast[plot]"``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from typing import Any

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
    _demo_robust(args.seed)
    _demo_planner(args.seed)
    return 0


def _max_angle_deg(V: np.ndarray, Q: np.ndarray) -> float:
    """Largest principal angle (degrees) between span(V) and span(Q), both orthonormal."""
    s = np.linalg.svd(V.T @ Q, compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(s.min(), -1.0, 1.0))))


def _demo_robust(seed: int) -> None:
    import lpfast

    n, d, k = 20000, 256, 32
    print(f"\n== Robust low-rank factorization: {n} x {d} table near a rank-{k} subspace, "
          f"5% far-away rows ==")
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    E = rng.standard_normal((n, k)) @ Q.T + 0.01 * rng.standard_normal((n, d))
    bad = rng.choice(n, n // 20, replace=False)
    E[bad] = 3.0 * rng.standard_normal((bad.size, d))
    E = E.astype(np.float32)
    for p in (2.0, 1.0):
        t0 = time.perf_counter()
        fit = lpfast.lp_subspace(E, k, p)
        secs = time.perf_counter() - t0
        name = "SVD (p=2)" if p == 2.0 else f"l{p:g} IRLS "
        print(f"{name}: largest angle to the planted subspace {_max_angle_deg(fit.basis, Q):5.2f} deg, "
              f"{fit.n_iter:3d} steps, {secs:.2f} s")


def _demo_planner(seed: int) -> None:
    import lpfast

    n, d = 4000, 64
    print(f"\n== Planner: {n} x {d} vocabulary whose most used rows lie off the main subspace, "
          f"ratio 8 ==")
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, 8)) @ rng.standard_normal((8, d))
    counts = 1e6 / np.arange(1, n + 1) ** 1.1  # Zipf usage: row 0 is the most frequent
    E[:100] = 4.0 * rng.standard_normal((100, d))  # frequent tokens: far from the bulk
    E += 0.05 * rng.standard_normal((n, d))
    t0 = time.perf_counter()
    plan = lpfast.plan_compression(E.astype(np.float32), 8, weights=lpfast.usage_weights(counts),
                                   seed=seed)
    print(plan)
    print(f"planned in {time.perf_counter() - t0:.1f} s")


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
    if args.plot:
        if not any(spec["method"] == "auto" for _, spec in rules):
            print("error: --plot: plots the plans of 'auto' rules; no --rule uses auto",
                  file=sys.stderr)
            return 2
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            print(f"error: --plot needs matplotlib: pip install matplotlib "
                  f"(or pip install \"lpfast[plot]\") ({e})", file=sys.stderr)
            return 2
        try:
            sweep = _ratios(argparse.Namespace(ratio=None, ratios=args.plot_ratios or ""),
                            required=False)
        except _CliError as e:
            print(f"error: --plot-ratios: {e}", file=sys.stderr)
            return 2
        for _, spec in rules:
            if spec["method"] == "auto" and "sweep" not in spec and sweep:
                spec["sweep"] = sweep
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
        with open(args.report_json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
        print(f"report: {args.report_json}")
    if args.plot:
        planned = [r for r in report.layers if r.plan is not None]
        root, ext = os.path.splitext(args.plot)
        for r in planned:
            path = args.plot if len(planned) == 1 else f"{root}-{r.name}{ext or '.png'}"
            n, d = r.plan.shape
            spec = next(sp for pat, sp in rules if fnmatch.fnmatchcase(r.name, pat))
            weighted = spec.get("counts") is not None or spec.get("weights") is not None
            title = f"{r.name} ({n} x {d}){', usage-weighted' if weighted else ''}"
            plot_plans(r.sweep or [r.plan], path, title, weighted=weighted)
            print(f"plot: {path}")
    return 0


_RULE_HELP = """PATTERN=METHOD:RATIO[:key=value,...], repeatable. PATTERN is an fnmatch pattern on
module names (e.g. '*.word_embeddings'); METHOD is lowrank | projective | doped_kron | auto;
RATIO the layer's parameter compression ratio; options e.g. p=1.0, n_subspaces=4,
a_shape=16x8, rank=2; for auto: counts=PATH.npy|PATH.pt (token counts, one per row),
candidates=svd/lp:1/projective:5, seed=0. Examples: --rule '*.word_embeddings=lowrank:4:p=1.0',
--rule '*.word_embeddings=auto:8:counts=counts.npy'"""


# -- plan --------------------------------------------------------------------------------------

class _CliError(Exception):
    """A user error: printed as ``error: ...``, exit code 2."""


def _tensor_to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)  # float16 / bfloat16: NumPy has no bfloat16
    return t.numpy()


def _load_torch(path: str, allow_pickle: bool) -> Any:
    try:
        import torch
    except ImportError as e:
        raise _CliError(f"{path}: reading .pt files needs torch ({e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        hint = ("" if allow_pickle else "; if it is a whole pickled model you trust, pass "
                "--allow-pickle (unpickling runs code from the file)")
        raise _CliError(f"{path}: cannot load ({type(e).__name__}: {str(e).splitlines()[0]}){hint}") from e


def _pick(obj: Any, key: str | None, path: str, ndim: int) -> np.ndarray:
    """The array named ``key`` in a loaded object (tensor, array, dict or nn.Module)."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # an nn.Module
        obj = obj.state_dict()
    if isinstance(obj, dict) or hasattr(obj, "files"):  # dict / state_dict / NpzFile
        names = list(obj.files) if hasattr(obj, "files") else [str(k) for k in obj]
        if key is None:
            fits = [k for k in names if getattr(obj[k], "ndim", None) == ndim]
            if len(fits) != 1:
                listed = ", ".join(fits[:12]) + (", ..." if len(fits) > 12 else "")
                raise _CliError(f"{path}: holds {len(fits)} {ndim}-d arrays; name one as "
                                f"{path}:NAME (e.g. {listed or 'none found'})")
            key = fits[0]
        elif key not in names and key + ".weight" in names:
            key += ".weight"
        if key not in names:
            near = [k for k in names if key.split(".")[-1] in k][:8]
            raise _CliError(f"{path}: no entry {key!r}" + (f" (similar: {', '.join(near)})" if near else ""))
        obj = obj[key]
    elif key is not None:
        raise _CliError(f"{path}: holds a single array; drop ':{key}'")
    if hasattr(obj, "detach"):
        obj = _tensor_to_numpy(obj)
    if not isinstance(obj, np.ndarray):
        raise _CliError(f"{path}: expected an array or tensor, got {type(obj).__name__}")
    if obj.ndim != ndim:
        raise _CliError(f"{path}{':' + key if key else ''}: expected a {ndim}-d array, got shape {obj.shape}")
    return obj


def load_array(spec: str, ndim: int = 2, allow_pickle: bool = False) -> np.ndarray:
    """An array from ``PATH`` or ``PATH:NAME``: ``.npy``, ``.npz``, ``.txt`` (vectors) or a
    torch file (``.pt``/``.pth``/``.bin``: a tensor, a state_dict or, with
    ``allow_pickle``, a whole model); ``NAME`` picks an entry (``.weight`` may be left out)."""
    path, key = spec, None
    if not os.path.isfile(spec) and ":" in spec:
        path, _, key = spec.rpartition(":")
        key = key or None
    if not os.path.isfile(path):
        raise _CliError(f"{spec}: no such file")
    low = path.lower()
    if low.endswith(".npy"):
        obj: Any = np.load(path, allow_pickle=False)
    elif low.endswith(".npz"):
        obj = np.load(path, allow_pickle=False)
    elif low.endswith(".txt") and ndim == 1:
        obj = np.loadtxt(path, ndmin=1)
    elif low.endswith((".pt", ".pth", ".bin")):
        obj = _load_torch(path, allow_pickle)
    else:
        raise _CliError(f"{path}: expected a .npy, .npz, .pt, .pth or .bin file"
                        + (" (or .txt)" if ndim == 1 else ""))
    return _pick(obj, key, path, ndim)


def _summary(plans: list[Any]) -> str:
    """Error of every candidate (rows) at every ratio (columns)."""
    names: list[str] = []
    for p in plans:
        names += [r["candidate"] for r in p.rows if r["candidate"] not in names]
    err = {(p.ratio, r["candidate"]): r["error"] for p in plans for r in p.rows}
    w = max([len(n) for n in names] + [14])
    c = max([len(p.best_row["candidate"]) for p in plans] + [8])
    lines = [f"{'error by ratio':<{w}}  " + "  ".join(f"{p.ratio:>{c}g}" for p in plans)]
    for name in sorted(names, key=lambda n: err.get((plans[0].ratio, n), float("inf"))):
        cells = [f"{err[(p.ratio, name)]:>{c}.5f}" if (p.ratio, name) in err else f"{'-':>{c}}"
                 for p in plans]
        lines.append(f"{name:<{w}}  " + "  ".join(cells))
    lines.append(f"{'best':<{w}}  " + "  ".join(f"{p.best_row['candidate']:>{c}}" for p in plans))
    return "\n".join(lines)


def plot_plans(plans: list[Any], path: str, title: str = "", weighted: bool = False) -> None:
    """PNG of each candidate's error vs the target compression ratio (log scale).

    Needs matplotlib (``pip install "lpfast[plot]"``); uses its object API (no pyplot, no
    global backend change). Doped candidates are solid lines, undoped dashed.
    """
    from matplotlib.figure import Figure

    by: dict[str, list[tuple[float, float]]] = {}
    for p in plans:
        for r in p.rows:
            by.setdefault(r["candidate"], []).append((p.ratio, r["error"]))
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    bases = list(dict.fromkeys(name.removesuffix("+doped") for name in by))
    for name, pts in by.items():
        pts.sort()
        color = f"C{bases.index(name.removesuffix('+doped')) % 10}"  # a method's two lines alike
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=4, color=color,
                linestyle="-" if name.endswith("+doped") else "--", label=name)
    ratios = sorted({p.ratio for p in plans})
    ax.set_xscale("log")
    ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
    ax.minorticks_off()
    ax.set_xlabel("compression ratio (n·d / stored numbers, indices included)")
    ax.set_ylabel(("usage-weighted " if weighted else "") + "relative reconstruction error")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _ratios(args: argparse.Namespace, required: bool = True) -> list[float]:
    vals = [] if args.ratio is None else [args.ratio]
    if args.ratios:
        try:
            vals += [float(v) for v in args.ratios.split(",") if v.strip()]
        except ValueError as e:
            raise _CliError(f"--ratios: expected comma-separated numbers, got {args.ratios!r}") from e
    if not vals and required:
        raise _CliError("give --ratio R and/or --ratios R1,R2,...")
    bad = [v for v in vals if not v > 1]
    if bad:
        raise _CliError(f"--ratio/--ratios: compression ratios must be > 1, got {bad}")
    return sorted(set(vals))


def plan(args: argparse.Namespace) -> int:
    import lpfast

    try:
        ratios = _ratios(args)
        if args.plot:
            try:
                import matplotlib  # noqa: F401
            except ImportError as e:
                raise _CliError(f"--plot needs matplotlib: pip install matplotlib "
                                f"(or pip install \"lpfast[plot]\") ({e})") from e
        E = load_array(args.input, 2, args.allow_pickle)
        weights = None
        if args.counts and args.weights:
            raise _CliError("give --counts or --weights, not both")
        if args.counts:
            counts = load_array(args.counts, 1, args.allow_pickle)
            if counts.shape[0] != E.shape[0]:
                raise _CliError(f"--counts: {counts.shape[0]} counts for {E.shape[0]} rows")
            weights = lpfast.usage_weights(counts, power=args.power, floor=args.floor)
        elif args.weights:
            weights = load_array(args.weights, 1, args.allow_pickle)
        candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
    except _CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        lpfast.set_num_threads(args.threads)
    n, d = E.shape
    what = "usage-weighted " if weights is not None else ""
    print(f"{args.input}: {n} x {d} {E.dtype}; {what}planning at ratio "
          f"{', '.join(f'{r:g}' for r in ratios)}")

    def progress(row: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"  [{row['index']}/{row['total']}] {row['candidate']:<20} dim {row['rank']:4d}  "
                  f"exact rows {row['n_exact']:6d}  error {row['error']:.5f}  "
                  f"({row['seconds']:.2f} s)", flush=True)

    plans = []
    doping = {"both": (False, True), "only": (True,), "none": (False,)}[args.doping]
    for r in ratios:
        if len(ratios) > 1 and not args.quiet:
            print(f"ratio {r:g}:")
        try:
            p = lpfast.plan_compression(E, r, weights=weights, candidates=candidates,
                                        seed=args.seed, doping=doping, refit=not args.no_refit,
                                        callback=progress)
        except (ValueError, TypeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        plans.append(p)
        print(p.to_markdown() if args.markdown else p, flush=True)
        print()
    if len(plans) > 1:
        print(_summary(plans))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([p.to_dict() for p in plans], f, indent=2)
        print(f"json: {args.json}")
    if args.plot:
        title = f"{os.path.basename(args.input)} ({n} x {d}){', usage-weighted' if weights is not None else ''}"
        plot_plans(plans, args.plot, title, weighted=weights is not None)
        print(f"plot: {args.plot}")
    return 0


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
    p_comp.add_argument("--plot", metavar="OUT.png",
                        help="save each auto layer's error vs compression ratio (needs "
                             "matplotlib; several auto layers: OUT-<layer>.png)")
    p_comp.add_argument("--plot-ratios", metavar="R1,R2,...",
                        help="with --plot: also plan auto layers at these ratios (for the plot "
                             "only; the layer is built at its rule's ratio)")
    p_plan = sub.add_parser(
        "plan", help="rank compression methods on one matrix (table, optional plot)",
        description="Fit SVD, lp and k-subspace factorizations with and without row doping "
                    "at one parameter budget per ratio (lpfast.plan_compression) and print "
                    "the ranked table; optionally plot error vs compression ratio.")
    p_plan.add_argument("input", metavar="IN[:NAME]",
                        help="a .npy/.npz/.pt/.pth/.bin file; NAME picks an entry of a "
                             "state_dict or .npz (e.g. model.pt:embeddings.word_embeddings)")
    p_plan.add_argument("--ratio", type=float, help="compression ratio (> 1)")
    p_plan.add_argument("--ratios", metavar="R1,R2,...", help="more ratios (for --plot)")
    p_plan.add_argument("--counts", metavar="PATH[:NAME]",
                        help="token counts, one per row (.npy/.pt/.txt): weights = "
                             "usage_weights(counts, --power, --floor)")
    p_plan.add_argument("--power", type=float, default=1.0, help="usage weight power (default 1)")
    p_plan.add_argument("--floor", type=float, default=1.0, help="usage weight floor (default 1)")
    p_plan.add_argument("--weights", metavar="PATH[:NAME]", help="row weights as such")
    p_plan.add_argument("--candidates", metavar="C1,C2,...",
                        help="e.g. svd,lp:1,lp:1.5,projective:5 (default: svd, lp p=1/1.5, "
                             "projective k=2/5/10)")
    p_plan.add_argument("--doping", choices=("both", "only", "none"), default="both",
                        help="fit each candidate with and/or without row doping")
    p_plan.add_argument("--no-refit", action="store_true", help="skip the winner's full refit")
    p_plan.add_argument("--seed", type=int, default=0)
    p_plan.add_argument("--plot", metavar="OUT.png", help="save error vs ratio (needs matplotlib)")
    p_plan.add_argument("--json", metavar="PATH", help="also write the plans' rows as JSON")
    p_plan.add_argument("--markdown", action="store_true", help="print tables as markdown")
    p_plan.add_argument("--allow-pickle", action="store_true",
                        help="allow whole pickled torch models (runs code from the file)")
    p_plan.add_argument("--threads", type=int, default=0, help="threads for lpfast")
    p_plan.add_argument("--quiet", action="store_true", help="no per-candidate progress")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or [])])
    return {"demo": demo, "info": info, "compress": compress, "plan": plan}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
