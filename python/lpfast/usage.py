"""Row weights from corpus usage: which rows of an embedding a model reads most.

``usage_weights(counts)`` turns token counts into the ``weights=`` of every lpfast fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import as_float, as_float_array

__all__ = ["usage_weights"]


def usage_weights(counts: Any, power: float = 1.0, floor: float = 1.0, *,
                  normalize: str | None = "mean") -> np.ndarray:
    """Row weights from token counts: ``w_i = max(counts_i, floor) ** power``, mean 1.

    Pass the result as ``weights=`` to any fit (``lp_subspace``, ``k_subspaces``,
    ``row_doped_fit``, ``plan_compression``): the fitted cost and the reported error then
    weigh each row of an embedding (or each output unit) by how much it is used.

    Parameters
    ----------
    counts : array_like, shape (n,)
        Non-negative, finite occurrence counts of each row (token) in a corpus; integers or
        floats (a torch tensor is accepted).
    power : float >= 0
        Exponent of the transform. ``1`` (default): a weighted squared error is the expected
        squared error per token occurrence of the counting corpus. ``0.5`` damps the head
        (sqrt-frequency, less tied to one corpus); ``0`` gives uniform weights.
    floor : float >= 0
        Counts below ``floor`` are raised to it before the power, so rows never seen in the
        corpus (count 0) still count as if seen ``floor`` times. Default 1. ``floor=0``
        gives unseen rows weight 0 (they are then ignored by fits and scores).
    normalize : {"mean", "sum", None}
        Scale to mean 1 (default), to sum 1, or leave unscaled. Fits are invariant to a
        common scale; mean 1 keeps weighted costs comparable to unweighted ones.

    Returns
    -------
    ndarray of float64, shape (n,)
        Non-negative weights with a positive sum.

    Raises
    ------
    ValueError
        ``counts`` not 1-d, empty, negative or non-finite; ``power`` or ``floor`` negative;
        all weights zero.

    Notes
    -----
    O(n). Example: ``w = lpfast.usage_weights(np.bincount(token_ids, minlength=vocab))``.
    """
    c = as_float_array(counts, "counts", np.dtype(np.float64), ndim=1)
    if c.shape[0] == 0:
        msg = "counts: expected at least one count, got an empty array"
        raise ValueError(msg)
    if (c < 0).any():
        msg = "counts: must be non-negative"
        raise ValueError(msg)
    power = as_float(power, "power", low=0.0)
    floor = as_float(floor, "floor", low=0.0)
    if normalize not in ("mean", "sum", None):
        msg = f"normalize: expected 'mean', 'sum' or None, got {normalize!r}"
        raise ValueError(msg)
    w = np.maximum(c, floor) ** power
    total = float(w.sum())
    if not (total > 0 and np.isfinite(total)):
        msg = (f"counts: the weights max(counts, floor={floor}) ** {power} have sum {total}; "
               f"need a positive finite sum (raise floor?)")
        raise ValueError(msg)
    if normalize == "mean":
        w *= w.shape[0] / total
    elif normalize == "sum":
        w /= total
    return w
