"""The error/speed frontier of ``"auto"`` on Linear layers, as a picture.

:func:`plot_frontier` draws, per Linear that ``"auto"`` chose for, every candidate as a
point (speed-up over the dense layer, output error), the Pareto frontier through the ones
no other beats on both, the speed the target asked for, and the chosen fit.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

__all__ = ["frontier", "plot_frontier"]

_MARKERS = {"lowrank": "o", "lowrank_sparse": "s", "doped_kron": "^"}


def frontier(candidates: Sequence[Any]) -> list[Any]:
    """The candidates no other one beats on both speed-up (higher) and error (lower), by
    increasing speed-up: the best error reachable at each speed. O(n log n)."""
    pts = sorted(candidates, key=lambda c: (-c.speedup, c.error))
    out, best = [], math.inf
    for c in pts:
        if c.error < best:
            out.append(c)
            best = c.error
    return out[::-1]


def _selection_items(selections: Any) -> list[tuple[str, Any]]:
    """(name, Selection) pairs of what :func:`plot_frontier` accepts, else TypeError."""
    if hasattr(selections, "layers"):
        return [(r.name, r.selection) for r in selections.layers if r.selection is not None]
    what = ("selections: expected a CompressionReport, a mapping name -> Selection or a "
            "list of (name, Selection)")
    try:
        items = list(selections.items() if hasattr(selections, "items") else selections)
    except TypeError:
        raise TypeError(f"{what}, got {type(selections).__name__}") from None
    for item in items:
        if (not isinstance(item, tuple) or len(item) != 2
                or not hasattr(item[1], "candidates")):
            raise TypeError(f"{what}, got an item {item!r:.80}")
    return items


def plot_frontier(selections: Any, path: str, title: str = "") -> None:
    """Save a PNG of the candidates' output error against their speed-up, one panel per
    layer.

    Parameters
    ----------
    selections : CompressionReport, or a mapping name -> Selection, or a list of
        (name, Selection); the layers without a selection are left out.
    path : str, the PNG's path
    title : str, the figure's title

    Needs matplotlib (``pip install "lpfast[plot]"``); uses its object API (no pyplot, no
    global backend change). Log-scaled axes; the dotted vertical line is the speed the
    target required (1x for a ratio target), the circled point the chosen fit, hollow
    markers a ``sweep``'s comparison fits.

    Raises
    ------
    ValueError
        No layer has a selection (no ``"auto"`` rule on an nn.Linear).
    """
    items = _selection_items(selections)
    if not isinstance(path, (str, os.PathLike)) and not hasattr(path, "write"):
        msg = f"path: expected a file path or a binary file object, got {type(path).__name__}"
        raise TypeError(msg)
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not items:
        msg = "selections: no layer has an 'auto' candidate table (no auto rule on an nn.Linear)"
        raise ValueError(msg)
    cols = min(3, len(items))
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows + 0.4))
    for k, (name, sel) in enumerate(items):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, method in enumerate(dict.fromkeys(c.method for c in sel.candidates)):
            pts = [c for c in sel.candidates if c.method == method]
            # hollow: a sweep's comparison fits, never chosen
            face = ["none" if c.sweep else f"C{i}" for c in pts]
            ax.scatter([c.speedup for c in pts], [max(c.error, 1e-12) for c in pts],
                       marker=_MARKERS.get(method, "x"), label=method, s=22, facecolors=face,
                       edgecolors=f"C{i}")
            for c in pts:
                ax.annotate(f"{c.ratio:g}x", (c.speedup, max(c.error, 1e-12)), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
        front = frontier(sel.candidates)
        ax.plot([c.speedup for c in front], [max(c.error, 1e-12) for c in front], color="0.5",
                linewidth=1, linestyle="--", zorder=0, label="frontier")
        ax.axvline(sel.target.get("speedup", 1.0), color="0.3", linestyle=":", linewidth=1)
        best = sel.chosen
        ax.scatter([best.speedup], [max(best.error, 1e-12)], s=140, facecolors="none",
                   edgecolors="red", linewidths=1.2, label="chosen")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"speed-up over dense ({sel.rows} rows, {sel.threads} thr.)", fontsize=8)
        ax.set_ylabel("relative err_C" if sel.error != "weights" else "relative weight error²",
                      fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3, which="both")
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
