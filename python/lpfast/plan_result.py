"""The result of :func:`lpfast.plan_compression`: the ranked table and the winning fit."""

from __future__ import annotations

from typing import Any

import numpy as np

from .row_doped_result import RowDoped

__all__ = ["Plan"]

_COLUMNS = (("#", "place", "{:d}"), ("candidate", "candidate", "{}"), ("dim", "rank", "{:d}"),
            ("exact rows", "n_exact", "{:d}"), ("params", "n_params", "{:d}"),
            ("ratio", "ratio", "{:.2f}"), ("error", "error", "{:.5g}"),
            ("lp cost", "lp_cost", "{:.5g}"), ("time [s]", "seconds", "{:.2f}"))


class Plan:
    """Result of :func:`plan_compression`.

    Attributes
    ----------
    rows : list of dict
        One per (candidate, doping) fitted, best first (by ``error``, ties in candidate
        order). Keys: ``place`` (1 = best), ``candidate`` (name, e.g. ``"lp(p=1)+doped"``),
        ``method``, ``p``, ``n_subspaces``, ``doped``, ``rank`` (k, or j for projective),
        ``n_exact``, ``n_params`` (exact count, <= ``budget``), ``ratio`` (``n*d /
        n_params``), ``error`` (weighted relative reconstruction error), ``lp_cost``
        (``sum_i w_i ||e_i - ê_i||^p`` at the candidate's p), ``seconds`` (fit time,
        screening plus, for the winner, the refit), ``splits`` (list of dicts ``rank``,
        ``n_exact``, ``n_params``, ``error`` for every split tried), ``refit`` (winner
        only: whether the full-effort refit improved the screening fit).
    best : RowDoped
        The winner's fitted object (``best.to_dict()`` feeds a torch layer).
    best_row : dict
        ``rows[0]``.
    skipped : list of dict
        Candidates that did not fit the budget: ``candidate``, ``reason``.
    budget : int
        ``floor(n * d / ratio)``.
    ratio : float
    shape : tuple (n, d)
    seconds : float
        Wall time of the whole plan.
    """

    __slots__ = ("rows", "best", "skipped", "budget", "ratio", "shape", "seconds")

    def __init__(self, rows: list[dict[str, Any]], best: RowDoped, skipped: list[dict[str, Any]],
                 budget: int, ratio: float, shape: tuple[int, int], seconds: float):
        self.rows, self.best, self.skipped = rows, best, skipped
        self.budget, self.ratio, self.shape, self.seconds = budget, ratio, shape, seconds

    @property
    def best_row(self) -> dict[str, Any]:
        return self.rows[0]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = [h for h, _, _ in _COLUMNS]
        body = [[fmt.format(r[key]) for _, key, fmt in _COLUMNS] for r in self.rows]
        return head, body

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready plain values (ratio, budget, shape, seconds, rows, skipped);
        the fitted ``best`` object is left out (``best.to_dict()`` holds its arrays)."""
        return {"ratio": self.ratio, "budget": self.budget, "shape": list(self.shape),
                "seconds": self.seconds, "rows": _plain(self.rows),
                "skipped": _plain(self.skipped)}

    def to_markdown(self) -> str:
        """The ranked table as GitHub markdown."""
        head, body = self._cells()
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---:" if i != 1 else ":---" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)

    def __str__(self) -> str:
        head, body = self._cells()
        widths = [max(len(c) for c in col) for col in zip(head, *body)]
        just = [str.ljust if i == 1 else str.rjust for i in range(len(head))]

        def line(cells):
            return "  ".join(j(c, wd) for j, c, wd in zip(just, cells, widths))

        n, d = self.shape
        out = [f"compression plan for a {n} x {d} matrix at ratio {self.ratio:g} "
               f"(budget {self.budget} parameters), {self.seconds:.1f} s",
               line(head), line(["-" * wd for wd in widths])]
        out += [line(row) for row in body]
        out += [f"skipped {s['candidate']}: {s['reason']}" for s in self.skipped]
        return "\n".join(out)

    def __repr__(self) -> str:
        b = self.best_row
        return (f"Plan(shape={self.shape}, ratio={self.ratio:g}, budget={self.budget}, "
                f"best={b['candidate']!r}, error={b['error']:.6g}, rows={len(self.rows)})")


def _plain(obj: Any) -> Any:
    """NumPy scalars inside containers as JSON-ready Python values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
