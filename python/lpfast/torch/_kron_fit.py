"""The fitting policy behind ``DopedKroneckerLinear.from_linear``, on NumPy arrays only:
which Kronecker factor shapes to try for an (m, n) weight, how a compression ratio becomes
the doping density, and which fit to keep.

No torch here: the policy belongs to the NumPy API (issue 12) and moves there whole; the
layer only converts tensors and copies the chosen operator.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .. import doped_kp_fit
from ._checks import RatioTooSmall

__all__ = ["factor_candidates", "fit_doped_kron"]

Shape2 = tuple[int, int]


def factor_candidates(m: int, n: int, limit: int = 4) -> list[tuple[Shape2, Shape2]]:
    """(a_shape, b_shape) pairs with m1*m2 = m, n1*n2 = n, fewest Kronecker parameters first.

    Factors of 1 are avoided when other choices exist (kron with a 1x1 factor is no
    compression). O((divisors of m) * (divisors of n)) after O(m + n) divisor scans.
    """
    def divisors(k: int) -> list[int]:
        return [d for d in range(1, k + 1) if k % d == 0]

    cands = []
    for m1 in divisors(m):
        for n1 in divisors(n):
            m2, n2 = m // m1, n // n1
            trivial = (m1 * n1 == 1) or (m2 * n2 == 1)
            cands.append((trivial, m1 * n1 + m2 * n2, abs(m1 - n1) + abs(m2 - n2),
                          (m1, n1), (m2, n2)))
    cands.sort()
    return [(a, b) for *_, a, b in cands[:limit]]


def fit_doped_kron(W: np.ndarray, cands: list[tuple[Shape2, Shape2]], rank: int, n_iter: int,
                   *, density: Optional[float] = None,
                   ratio: Optional[float] = None) -> tuple[Any, dict[str, Any]]:
    """Fit ``lpfast.doped_kp_fit`` for each factor-shape pair; keep the lowest error.

    Parameters
    ----------
    W : ndarray, shape (m, n), float32/float64 (validated by the caller)
    cands : list of ((m1, n1), (m2, n2))
        Factor shapes with m1*m2 = m, n1*n2 = n.
    rank : int >= 1
        Kronecker rank, capped per pair at ``min(m1*n1, m2*n2)``.
    n_iter : int
        Alternation rounds of ``doped_kp_fit``.
    density : float in [0, 1], or
    ratio : float > 1
        Exactly one: S's density, or the weight's compression ratio
        ``m*n / (R*(m1*n1 + m2*n2) + nnz)`` (S gets what the factors leave of the budget).

    Returns
    -------
    (DopedKronecker, info)
        The best operator (its ``rank`` the capped one) and ``{"relative_error", "a_shape",
        "b_shape", "density", "candidates"}`` (every pair tried, with its error or why it
        was skipped).

    Raises
    ------
    RatioTooSmall
        ``ratio`` leaves no room for the Kronecker factors of any pair.

    Cost: one ``doped_kp_fit`` per pair, O(n_iter * m * n * rank) each.
    """
    m, n = W.shape
    tried, best = [], None
    for a, b in cands:
        kp = rank * (a[0] * a[1] + b[0] * b[1])
        if ratio is not None:
            budget = m * n / ratio - kp
            if budget < 0:
                tried.append({"a_shape": a, "b_shape": b, "relative_error": None,
                              "reason": f"Kronecker factors alone ({kp}) exceed the budget"})
                continue
            d = math.floor(budget) / (m * n)
        else:
            d = density
        r = min(rank, a[0] * a[1], b[0] * b[1])
        op = doped_kp_fit(W, a, b, density=d, rank=r, n_iter=n_iter)
        err = float(min(op.fit_info["relative_error"]))
        tried.append({"a_shape": a, "b_shape": b, "density": d, "relative_error": err})
        if best is None or err < best[0]:
            best = (err, op, a, b, d)
    if best is None:
        msg = (f"ratio: {ratio} leaves no room even for the Kronecker factors of a "
               f"{m}x{n} weight at rank {rank}; lower the ratio or the rank")
        raise RatioTooSmall(msg)
    err, op, a, b, d = best
    return op, {"relative_error": err, "a_shape": a, "b_shape": b, "density": d,
                "candidates": tried}
