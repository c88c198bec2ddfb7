"""Calibrated compression of one ``nn.Linear``: the NumPy API's data-aware fits as layers.

:func:`fit_linear` fits ``linear.weight`` under the layer's input statistics (the Gram
XᵀX or per-feature second moments, e.g. from ``lpfast.torch.calibrate``) and returns a
:class:`~lpfast.torch.LowRankLinear`, :class:`~lpfast.torch.LowRankSparseLinear` or
:class:`~lpfast.torch.DopedKroneckerLinear` with the bias copied;
:func:`params_for_ratio` turns a compression ratio into the rank / density of each method.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ..._validate import as_float, as_int, as_shape2
from ..layers.kron import DopedKroneckerLinear
from ..layers.lowrank import LowRankLinear
from ..layers.lowrank_sparse import LowRankSparseLinear

__all__ = ["METHODS", "fit_linear", "params_for_ratio"]

METHODS = ("lowrank", "lowrank_sparse", "doped_kron")


def _method(method: Any) -> str:
    if method not in METHODS:
        msg = f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}"
        raise ValueError(msg)
    return method


def params_for_ratio(method: str, out_features: int, in_features: int, ratio: float, *,
                     rank: Optional[int] = None, sparse_share: float = 0.2,
                     a_shape: Any = None, b_shape: Any = None) -> dict[str, Any]:
    """The structure of a ``method`` fit whose weight stores at most ``out*in/ratio`` values.

    The budget is ``B = floor(out * in / ratio)`` stored weight values (the bias is kept
    as it is by every method and not counted; an entry of S counts one value, its column
    index is not counted, as in ``n_params`` everywhere in lpfast):

    * ``"lowrank"``: ``rank = floor(B / (out + in))``.
    * ``"lowrank_sparse"``: ``rank = max(1, floor((1 - sparse_share) * B / (out + in)))``
      (or the given ``rank``), S gets the rest: ``nnz = B - rank*(out + in)``.
    * ``"doped_kron"``: ``a_shape``/``b_shape`` needed, ``rank`` default 1; S gets
      ``B - rank*(m1*n1 + m2*n2)``.

    Returns
    -------
    dict of keyword arguments for :func:`fit_linear` (``rank``, and ``density`` where S
    exists, plus the shapes for doped_kron) with ``n_params`` (the values stored, <= B).
    Raises ValueError when the budget cannot hold the smallest such structure.
    """
    method = _method(method)
    m = as_int(out_features, "out_features", low=1)
    n = as_int(in_features, "in_features", low=1)
    ratio = as_float(ratio, "ratio", low=1.0)
    budget = math.floor(m * n / ratio)
    if method == "doped_kron":
        if a_shape is None or b_shape is None:
            msg = "a_shape, b_shape: doped_kron needs both to split the budget"
            raise ValueError(msg)
        (m1, n1), (m2, n2) = as_shape2(a_shape, "a_shape"), as_shape2(b_shape, "b_shape")
        rank = 1 if rank is None else as_int(rank, "rank", low=1)
        fixed, out = rank * (m1 * n1 + m2 * n2), {"a_shape": (m1, n1), "b_shape": (m2, n2)}
    else:
        if rank is None:
            share = 0.0 if method == "lowrank" else as_float(sparse_share, "sparse_share", low=0.0, high=1.0)
            rank = math.floor((1.0 - share) * budget / (m + n))
            rank = max(rank, 1) if method == "lowrank_sparse" else rank
        rank = min(as_int(rank, "rank", low=0), m, n)
        fixed, out = rank * (m + n), {}
    if rank < 1 or fixed > budget:
        msg = (f"ratio: {ratio} leaves {budget} values for a {m}x{n} weight, too few for a "
               f"{method} fit of rank {max(rank, 1)}; lower the ratio")
        raise ValueError(msg)
    out["rank"] = rank
    nnz = 0 if method == "lowrank" else budget - fixed
    if method != "lowrank":
        out["density"] = nnz / (m * n)
    out["n_params"] = fixed + nnz
    return out


def _gram_of(stat: Any) -> Any:
    """NumPy view of a torch statistic (float64 as recorded); other inputs pass through."""
    if isinstance(stat, torch.Tensor):
        return stat.detach().cpu().numpy()
    return stat


def fit_linear(linear: nn.Linear, method: str, *, input_gram: Any = None,
               input_scale: Any = None, ratio: Optional[float] = None, **params: Any) -> nn.Module:
    """Compress one ``nn.Linear`` under its input statistics.

    Parameters
    ----------
    linear : torch.nn.Linear, float32 or float64, CPU
    method : "lowrank" | "lowrank_sparse" | "doped_kron"
        ``lpfast.lowrank_fit`` -> :class:`LowRankLinear`; ``lpfast.lowrank_sparse_fit`` ->
        :class:`LowRankSparseLinear`; ``lpfast.doped_kp_fit_calibrated`` ->
        :class:`DopedKroneckerLinear`.
    input_gram : array or tensor, shape (in, in), optional
        XᵀX of the layer's inputs (float64). ``input_scale`` (shape (in,)): second
        moments only. Neither: the weights-only fit.
    ratio : float >= 1, optional
        Parameter budget: the result's weight stores at most ``in*out/ratio`` values
        (:func:`params_for_ratio` picks rank/density; ``density`` is then not allowed,
        nor ``rank`` for lowrank; for lowrank_sparse a ``rank`` or ``sparse_share``
        steers the split). For doped_kron without ``a_shape``/``b_shape``
        the factor shapes are chosen as ``DopedKroneckerLinear.from_linear`` chooses them
        (weights-only, lowest error of a few factorizations), then refit under C.
    **params
        The fit's own arguments: ``rank`` (all), ``density`` (lowrank_sparse, doped_kron),
        ``a_shape``, ``b_shape`` (doped_kron), ``n_iter`` (default: the fit's; 3 for
        doped_kron as in ``DopedKroneckerLinear.from_linear``), ``ridge``, ``tol``.

    Returns
    -------
    nn.Module of the linear's dtype, the bias copied, with ``fit_info`` (the fit's
    relative calibration error and the parameters used). Cost: that of the NumPy fit.
    """
    if not isinstance(linear, nn.Linear):
        msg = f"linear: expected a torch.nn.Linear, got {type(linear).__name__}"
        raise TypeError(msg)
    method = _method(method)
    weight = linear.weight
    if weight.dtype not in (torch.float32, torch.float64) or weight.device.type != "cpu":
        msg = f"linear: expected a float32/float64 CPU weight, got {weight.dtype} on {weight.device}"
        raise TypeError(msg)
    W = weight.detach().numpy()
    out_f, in_f = W.shape
    stats = {"input_gram": _gram_of(input_gram), "input_scale": _gram_of(input_scale)}
    if ratio is not None:
        fixed = {k: params.pop(k) for k in ("sparse_share",) if k in params}
        for key in ("density",) + (("rank",) if method == "lowrank" else ()):
            if key in params:
                msg = f"{key}: give either ratio= or {key}=, not both"
                raise ValueError(msg)
        if method == "doped_kron" and params.get("a_shape") is None:
            start = _kron_start(linear, ratio, params.get("rank", 1), params.get("n_iter"))
            params.update(a_shape=start.a_shape, b_shape=start.b_shape, start=start)
        chosen = params_for_ratio(method, out_f, in_f, ratio, **fixed,
                                  **{k: params.pop(k) for k in ("rank", "a_shape", "b_shape") if k in params})
        chosen.pop("n_params")
        params.update(chosen)
    bias = linear.bias is not None
    if method == "lowrank":
        from ...calibrated import lowrank_fit

        U, V = lowrank_fit(W, **params, **stats)
        layer = LowRankLinear(in_f, out_f, U.shape[1], bias=bias, dtype=weight.dtype)
        with torch.no_grad():
            layer.U.copy_(torch.from_numpy(U))
            layer.V.copy_(torch.from_numpy(V))
        approx = (U, V)
    elif method == "lowrank_sparse":
        from ...calibrated import lowrank_sparse_fit

        op = lowrank_sparse_fit(W, **params, **stats)
        layer = LowRankSparseLinear(in_f, out_f, op.rank, 0.0, bias=bias, dtype=weight.dtype)
        layer.load_operator_(op)
        approx = op
    else:
        from ...calibrated_kron import doped_kp_fit_calibrated

        a_shape, b_shape = params.pop("a_shape", None), params.pop("b_shape", None)
        if a_shape is None or b_shape is None:
            msg = "a_shape, b_shape: doped_kron needs both (or ratio= to choose them)"
            raise ValueError(msg)
        density = params.pop("density", 0.01)
        params.setdefault("n_iter", 3)  # DopedKroneckerLinear.from_linear's default
        op = doped_kp_fit_calibrated(W, a_shape, b_shape, density, **params, **stats)
        layer = DopedKroneckerLinear(in_f, out_f, op.a_shape, op.b_shape, 0.0, rank=op.rank,
                                     bias=bias, dtype=weight.dtype)
        layer.load_operator_(op)
        approx = op
    if bias:
        with torch.no_grad():
            layer.bias.copy_(linear.bias)
    from ...calibrated import calibration_error

    layer.fit_info = {"method": method, **{k: v for k, v in params.items() if k != "start"},
                      "calibration_error": calibration_error(W, approx, **stats, relative=True)}
    return layer


def _kron_start(linear: nn.Linear, ratio: float, rank: Any, n_iter: Any):
    """The weights-only fit ``DopedKroneckerLinear.from_linear`` makes for this ratio (its
    factor-shape search), as a bias-free ``lpfast.DopedKronecker``: the start of the
    calibrated fit, which thus searches the shapes only once."""
    from ...kron import DopedKronecker

    fit = {} if n_iter is None else {"n_iter": n_iter}
    op = DopedKroneckerLinear.from_linear(linear, ratio=ratio, rank=rank, **fit).to_operator()
    return DopedKronecker(op.A, op.B, op.S)
