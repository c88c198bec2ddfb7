"""``python -m lpfast compress IN.pt OUT.pt --rule ...``: compress layers of a saved torch model."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time

from .arrays import CliError
from .plan import parse_ratios, require_matplotlib
from .plot import plot_plans

RULE_HELP = """PATTERN=METHOD:RATIO[:key=value,...], repeatable. PATTERN is an fnmatch pattern on
module names (e.g. '*.word_embeddings'); METHOD is lowrank | projective | doped_kron | auto;
RATIO the layer's parameter compression ratio; options e.g. p=1.0, n_subspaces=4,
a_shape=16x8, rank=2; for auto: counts=PATH.npy|PATH.pt (token counts, one per row),
candidates=svd/lp:1/projective:5, seed=0. Examples: --rule '*.word_embeddings=lowrank:4:p=1.0',
--rule '*.word_embeddings=auto:8:counts=counts.npy'"""



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
            require_matplotlib("--plot")
        except CliError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            sweep = parse_ratios(None, args.plot_ratios, required=False)
        except CliError as e:
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
