"""``python -m lpfast compress IN.pt OUT.pt --rule ...``: compress layers of a saved torch model."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time

from .args import check_input_file, check_threads, check_writable
from .arrays import CliError, load_torch
from .plan import parse_ratios, require_matplotlib
from .plot import plot_plans

RULE_HELP = """PATTERN=METHOD:RATIO[:key=value,...], repeatable. PATTERN is an fnmatch pattern on
module names (e.g. '*.word_embeddings'); METHOD is lowrank | lowrank_sparse | projective |
doped_kron | auto; RATIO the layer's parameter compression ratio; options e.g. p=1.0,
n_subspaces=4, a_shape=16x8, rank=2; for auto on an embedding: counts=PATH.npy|PATH.pt
(token counts, one per row), candidates=svd/lp:1/projective:5, seed=0; auto on a Linear
picks among lowrank, lowrank_sparse and doped_kron by output error and measured speed, for
a ratio ('auto:2') or a speed-up over the dense layer ('auto:speedup=1.3', fit at
ratios=2/4/8), timed at rows=16. Examples: --rule '*.word_embeddings=lowrank:4:p=1.0',
--rule '*.word_embeddings=auto:8:counts=counts.npy', --rule '*.intermediate.dense=auto:2'"""


def compress(args: argparse.Namespace) -> int:
    try:
        import torch

        import lpfast.torch as lt
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rules = _check_args(args, lt)
        calibration = None
        if args.calibration:
            check_input_file(args.calibration, "--calibration")
            try:
                calibration = lt.Calibration.load(args.calibration)
            except (OSError, ValueError) as e:  # ValueError: "PATH: not a saved calibration"
                raise CliError(f"--calibration: {e}") from e
        print(f"loading {args.input}")
        model = _load_model(args.input, args.allow_pickle, torch)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
        import lpfast

        lpfast.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        report = lt.compress(model, rules, calibration=calibration,
                             strict=not args.allow_unmatched,
                             progress=None if args.quiet else print)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lt.save_compressed(model, args.output)
    print(f"\n{report}\ncompressed in {time.perf_counter() - t0:.1f} s; saved {args.output} "
          f"(read it with lpfast.torch.load_compressed({args.output!r}, <the original model>))")
    if args.report_json:
        with open(args.report_json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
        print(f"report: {args.report_json}")
    if args.plot:
        _plot(args, rules, report)
    return 0


def _check_args(args: argparse.Namespace, lt) -> list:
    """Everything that can be checked before the model is read and compressed: rules,
    thread count, plot options, the input file and every output path (CliError)."""
    try:
        rules = [lt.parse_rule(r) for r in args.rule]
    except ValueError as e:
        raise CliError(f"--rule: {e}") from e
    check_threads(args.threads)
    if args.plot:
        if not any(spec["method"] == "auto" for _, spec in rules):
            raise CliError("--plot: plots 'auto' rules (an embedding's plans, the Linears' "
                           "error/speed frontier); no --rule uses auto")
        require_matplotlib("--plot")
        try:
            sweep = parse_ratios(None, args.plot_ratios, required=False)
        except CliError as e:
            raise CliError(f"--plot-ratios: {e}") from e
        for _, spec in rules:
            if spec["method"] == "auto" and "sweep" not in spec and sweep:
                spec["sweep"] = sweep
    check_input_file(args.input, "IN.pt")
    check_writable(args.output, "OUT.pt")
    if args.report_json:
        check_writable(args.report_json, "--report-json")
    if args.plot:
        check_writable(args.plot, "--plot")
    return rules


def _load_model(path: str, allow_pickle: bool, torch):
    """The nn.Module saved whole in ``path``: without ``allow_pickle`` torch reads it with
    ``weights_only=True``, which refuses the pickled classes of a whole model (and any
    code a crafted file would run) instead of executing them."""
    try:
        model = load_torch(path, allow_pickle)
    except CliError as e:
        raise CliError(f"IN.pt: {e}") from e
    if not isinstance(model, torch.nn.Module):
        hint = (" (a state_dict? compress needs the whole model: torch.save(model, path), "
                "read with --allow-pickle)" if isinstance(model, dict) else
                " (save the model itself with torch.save(model, path))")
        what = type(model).__name__
        raise CliError(f"IN.pt: {path} holds a {what}, not a torch.nn.Module{hint}")
    return model


def _plot(args: argparse.Namespace, rules: list, report) -> None:
    """The planner's error-vs-ratio plot of each planned layer (OUT-<layer>.png when more
    than one), and the error/speed frontier of the Linears auto chose for (OUT.png, or
    OUT-frontier.png next to plans)."""
    from lpfast.torch import plot_frontier

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
    if any(r.selection is not None for r in report.layers):
        path = f"{root}-frontier{ext or '.png'}" if planned else args.plot
        plot_frontier(report, path, title=f"{os.path.basename(args.input)}: output error vs speed-up")
        print(f"plot: {path}")
