"""Plans at several ratios as a text table and a PNG (error vs compression ratio)."""

from __future__ import annotations

from typing import Any


def summary(plans: list[Any]) -> str:
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
