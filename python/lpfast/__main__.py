"""Command line: ``python -m lpfast [demo|info|compress|plan]``.

``demo`` (the default) compresses a built-in synthetic layer and times it; ``info`` prints
how the extension was built; ``compress IN.pt OUT.pt --rule PATTERN=METHOD:RATIO ...``
replaces layers of a saved torch model by lpfast's compressed layers (needs torch; a whole
pickled model is read only with ``--allow-pickle``, OUT.pt is read back without unpickling by
``lpfast.torch.load_compressed``; METHOD
``auto`` runs the planner on an embedding, and on a Linear picks a fit by output error and
speed, printing its table; ``--calibration CAL.pt`` makes the Linear fits data-aware); ``plan IN[:NAME] --ratio R`` ranks the
compression methods on one matrix and can plot error vs compression ratio (``--plot``,
needs matplotlib: ``pip install "lpfast[plot]"``).
"""

from __future__ import annotations

import argparse
import sys

from .cli.compress import RULE_HELP, compress
from .cli.demo import demo, info
from .cli.plan import plan

__all__ = ["compress", "demo", "info", "main", "plan"]


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
                    "by lpfast's compressed layers and save the result. A whole model is a "
                    "pickle: reading it runs code from the file, so it is read only with "
                    "--allow-pickle (trusted files only); without it IN.pt is read with "
                    "torch.load(weights_only=True) and a pickled model is refused. OUT.pt "
                    "holds no pickled code (the state_dict and a description of the new "
                    "layers): read it with lpfast.torch.load_compressed(OUT.pt, model), model "
                    "a freshly built original.")
    p_comp.add_argument("input", metavar="IN.pt")
    p_comp.add_argument("output", metavar="OUT.pt")
    p_comp.add_argument("--rule", action="append", required=True, help=RULE_HELP)
    p_comp.add_argument("--report-json", metavar="PATH", help="also write the report as JSON")
    p_comp.add_argument("--allow-unmatched", action="store_true",
                        help="ignore rules that match no module (default: error)")
    p_comp.add_argument("--allow-pickle", action="store_true",
                        help="read IN.pt, a whole pickled model, by unpickling it: this runs "
                             "code from the file, use it for files you trust only")
    p_comp.add_argument("--threads", type=int, default=0, help="threads for torch and lpfast")
    p_comp.add_argument("--quiet", action="store_true", help="no per-layer progress")
    p_comp.add_argument("--calibration", metavar="CAL.pt",
                        help="input statistics of the Linears (lpfast.torch.calibrate(...)"
                             ".save(CAL.pt)): their fits minimize the output error on those "
                             "inputs, and auto chooses by it")
    p_comp.add_argument("--plot", metavar="OUT.png",
                        help="save each auto embedding's error vs compression ratio "
                             "(several: OUT-<layer>.png) and the auto Linears' error/speed "
                             "frontier (OUT.png, or OUT-frontier.png next to plans); needs "
                             "matplotlib")
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
    # Looked up at call time, so that a test may replace a subcommand on this module.
    run = {"demo": demo, "info": info, "compress": compress, "plan": plan}[args.command]
    return run(args)




if __name__ == "__main__":
    sys.exit(main())
