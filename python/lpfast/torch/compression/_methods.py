"""The built-in compression methods with a fixed layer kind (internal): ``"lowrank"``,
``"lowrank_sparse"``, ``"projective"`` and ``"doped_kron"``. Each turns a rule spec into the
layer's size (the largest rank, dimension or doping that fits the budget a ratio leaves) and
builds the layer with its own ``from_linear`` / ``from_embedding``, or, for a Linear the
running call has calibration statistics for, with the data-aware fit of the same size
(:func:`lpfast.torch.fit_linear` with ``input_gram=``). ``"auto"`` is in ``_auto.py``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from torch import nn

from ... import DopedKronecker
from ..._validate import as_float, as_int
from .._checks import RatioTooSmall
from ._rules import budget, exact_ratio, spec_keys, too_small, weight_budget
from ._stats import stats_of
from .linear import fit_linear, params_for_ratio
from ..layers.kron import DopedKroneckerLinear
from ..layers.lowrank import LowRankEmbedding, LowRankLinear
from ..layers.projective import ProjectiveEmbedding

__all__ = ["doped_kron", "lowrank", "lowrank_sparse", "projective"]


def _ridge(name: str, spec: Mapping[str, Any]) -> dict[str, float]:
    """The data-aware fits' ``ridge`` (relative to trace(C)/in), when the rule gives one."""
    if "ridge" not in spec:
        return {}
    return {"ridge": as_float(spec["ridge"], f"rules[{name!r}]['ridge']", low=0.0)}


def lowrank(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "lowrank", "ratio": r | "rank": k, "p": 1.0, "fit": {...}, "ridge": 1e-6}``.

    A Linear with calibration statistics gets the whitened truncated SVD under its input
    Gram (least squares: ``p`` must then be 2 or absent, ``fit`` absent)."""
    spec_keys(name, spec, {"ratio", "rank", "p", "fit", "ridge"}, ("ratio", "rank"))
    p = spec.get("p", 1.0)
    fit = dict(spec.get("fit", {}))
    if isinstance(module, nn.Linear):
        m, n = module.out_features, module.in_features
    elif isinstance(module, nn.Embedding):
        m, n = module.num_embeddings, module.embedding_dim
    else:
        msg = f"rules[{name!r}]: method 'lowrank' takes nn.Linear or nn.Embedding, got {type(module).__name__}"
        raise TypeError(msg)
    if "rank" in spec:
        rank = as_int(spec["rank"], f"rules[{name!r}]['rank']", low=1, high=min(m, n))
    else:
        rank = math.floor(weight_budget(name, module, spec) / (m + n))
        if rank < 1:
            raise too_small(name, spec, f"a rank-1 factorization of {name}")
        rank = min(rank, min(m, n))
    stats = stats_of(name) if isinstance(module, nn.Linear) else None
    if stats is not None:
        if spec.get("p", 2.0) != 2.0 or "fit" in spec:
            msg = (f"rules[{name!r}]: the calibrated low-rank fit is least squares under the "
                   f"input Gram; drop 'p' and 'fit' (or use p=2), or give {name} no calibration")
            raise ValueError(msg)
        return fit_linear(module, "lowrank", rank=rank, **_ridge(name, spec), **stats.kwargs())
    if isinstance(module, nn.Linear):
        return LowRankLinear.from_linear(module, rank, p, **fit)
    return LowRankEmbedding.from_embedding(module, rank, p, **fit)


def lowrank_sparse(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "lowrank_sparse", "ratio": r | "rank": k + "density": d,
    "sparse_share": 0.2, "n_iter": 3, "ridge": 1e-6}``: ``W ≈ U V + S``
    (:class:`LowRankSparseLinear`), under the input Gram when the layer has calibration
    statistics. With ``ratio`` the weight budget goes ``1 - sparse_share`` to the factors
    (rank at least 1) and the rest to S (:func:`lpfast.torch.params_for_ratio`)."""
    spec_keys(name, spec, {"ratio", "rank", "density", "sparse_share", "n_iter", "ridge"},
              ("ratio", "rank"))
    if not isinstance(module, nn.Linear):
        msg = f"rules[{name!r}]: method 'lowrank_sparse' takes nn.Linear, got {type(module).__name__}"
        raise TypeError(msg)
    m, n = module.out_features, module.in_features
    kw: dict[str, Any] = {k: spec[k] for k in ("n_iter",) if k in spec}
    if "rank" in spec:
        if "density" not in spec or "sparse_share" in spec:
            msg = f"rules[{name!r}]: 'rank' needs 'density' (and no 'sparse_share', a ratio's split)"
            raise ValueError(msg)
        kw["rank"] = as_int(spec["rank"], f"rules[{name!r}]['rank']", low=1, high=min(m, n))
        kw["density"] = as_float(spec["density"], f"rules[{name!r}]['density']", low=0.0, high=1.0)
    else:
        if "density" in spec:
            msg = f"rules[{name!r}]: 'density' goes with 'rank'; a ratio splits its budget by 'sparse_share'"
            raise ValueError(msg)
        size = math.floor(weight_budget(name, module, spec))
        if size < m + n:
            raise too_small(name, spec, f"a rank-1 factorization of {name}")
        share = as_float(spec.get("sparse_share", 0.2), f"rules[{name!r}]['sparse_share']",
                         low=0.0, high=1.0)
        chosen = params_for_ratio("lowrank_sparse", m, n, exact_ratio(m * n, size),
                                  sparse_share=share)
        kw.update(rank=min(chosen["rank"], m, n), density=chosen["density"])
    stats = stats_of(name)
    return fit_linear(module, "lowrank_sparse", **kw, **_ridge(name, spec),
                      **({} if stats is None else stats.kwargs()))


def projective(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "projective", "ratio": r | "dim": j, "n_subspaces": 4, "p": 2.0,
    "seed": 0, "n_init": 10, "fit": {...}}``."""
    spec_keys(name, spec, {"ratio", "dim", "n_subspaces", "p", "seed", "n_init", "fit"},
               ("ratio", "dim"))
    if not isinstance(module, nn.Embedding):
        msg = f"rules[{name!r}]: method 'projective' takes nn.Embedding, got {type(module).__name__}"
        raise TypeError(msg)
    n, d = module.num_embeddings, module.embedding_dim
    k = as_int(spec.get("n_subspaces", 4), f"rules[{name!r}]['n_subspaces']", low=1, high=n)
    if "dim" in spec:
        j = as_int(spec["dim"], f"rules[{name!r}]['dim']", low=1, high=d - 1)
    else:
        j = math.floor(budget(name, module, spec) / (n + k * d))
        if j < 1:
            raise too_small(name, spec, f"{k} subspaces of dimension 1")
        j = min(j, d - 1, n // k)
    fit = dict(spec.get("fit", {}))
    fit.setdefault("seed", spec.get("seed", 0))
    if "n_init" in spec:
        fit["n_init"] = spec["n_init"]
    return ProjectiveEmbedding.from_embedding(module, k, j, spec.get("p", 2.0), **fit)


def doped_kron(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "doped_kron", "ratio": r | "density": d, "a_shape": None, "b_shape": None,
    "rank": 1, "n_iter": 3, "cmr": 0.0}``."""
    spec_keys(name, spec, {"ratio", "density", "a_shape", "b_shape", "rank", "n_iter", "cmr"},
               ("ratio", "density"))
    if not isinstance(module, nn.Linear):
        msg = f"rules[{name!r}]: method 'doped_kron' takes nn.Linear, got {type(module).__name__}"
        raise TypeError(msg)
    kw = {k: spec[k] for k in ("a_shape", "b_shape", "rank", "n_iter", "cmr") if k in spec}
    if "ratio" in spec:
        size = math.floor(weight_budget(name, module, spec))
        if size < 2:
            raise too_small(name, spec, "Kronecker factors")
        kw["ratio"] = module.weight.numel() / size
        try:
            return DopedKroneckerLinear.from_linear(module, **kw)
        except RatioTooSmall as e:  # the layer's ratio is derived: name the rule's instead
            raise too_small(name, spec, "the Kronecker factors") from e
    return DopedKroneckerLinear.from_linear(module, density=spec["density"], **kw)
