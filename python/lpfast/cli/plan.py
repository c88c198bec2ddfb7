"""``python -m lpfast plan IN[:NAME] --ratio R``: rank the compression methods on one matrix."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .args import check_threads, check_writable
from .arrays import CliError, load_array
from .plot import plot_plans, summary


def parse_ratios(ratio: float | None, more: str | None, required: bool = True) -> list[float]:
    """The sorted distinct ratios of ``--ratio R`` and ``--ratios R1,R2,...`` (each > 1)."""
    vals = [] if ratio is None else [ratio]
    if more:
        try:
            vals += [float(v) for v in more.split(",") if v.strip()]
        except ValueError as e:
            raise CliError(f"--ratios: expected comma-separated numbers, got {more!r}") from e
    if not vals and required:
        raise CliError("give --ratio R and/or --ratios R1,R2,...")
    bad = [v for v in vals if not v > 1]
    if bad:
        raise CliError(f"--ratio/--ratios: compression ratios must be > 1, got {bad}")
    return sorted(set(vals))


def require_matplotlib(option: str) -> None:
    """Raise CliError naming ``option`` unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise CliError(f"{option} needs matplotlib: pip install matplotlib "
                       f"(or pip install \"lpfast[plot]\") ({e})") from e


def plan(args: argparse.Namespace) -> int:
    import lpfast

    try:
        ratios = parse_ratios(args.ratio, args.ratios)
        check_threads(args.threads)
        if args.plot:
            require_matplotlib("--plot")
            check_writable(args.plot, "--plot")
        if args.json:
            check_writable(args.json, "--json")
        E = load_array(args.input, 2, args.allow_pickle)
        weights = None
        if args.counts and args.weights:
            raise CliError("give --counts or --weights, not both")
        if args.counts:
            counts = load_array(args.counts, 1, args.allow_pickle)
            if counts.shape[0] != E.shape[0]:
                raise CliError(f"--counts: {counts.shape[0]} counts for {E.shape[0]} rows")
            weights = lpfast.usage_weights(counts, power=args.power, floor=args.floor)
        elif args.weights:
            weights = load_array(args.weights, 1, args.allow_pickle)
        candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
    except CliError as e:
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
        print(summary(plans))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([p.to_dict() for p in plans], f, indent=2)
        print(f"json: {args.json}")
    if args.plot:
        title = f"{os.path.basename(args.input)} ({n} x {d}){', usage-weighted' if weights is not None else ''}"
        plot_plans(plans, args.plot, title, weighted=weights is not None)
        print(f"plot: {args.plot}")
    return 0
