"""The built-in compression methods with a fixed layer kind (internal): ``"lowrank"``,
``"projective"`` and ``"doped_kron"``. Each turns a rule spec into the layer's size (the
largest rank, dimension or doping that fits the budget a ratio leaves) and builds the layer
with its own ``from_linear`` / ``from_embedding``. ``"auto"`` is in ``_auto.py``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from torch import nn

from .._validate import as_int
from ._checks import RatioTooSmall
from ._rules import budget, spec_keys, too_small, weight_budget
from .kron import DopedKroneckerLinear
from .lowrank import LowRankEmbedding, LowRankLinear
from .projective import ProjectiveEmbedding

__all__ = ["doped_kron", "lowrank", "projective"]


def lowrank(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "lowrank", "ratio": r | "rank": k, "p": 1.0, "fit": {...}}``."""
    spec_keys(name, spec, {"ratio", "rank", "p", "fit"}, ("ratio", "rank"))
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
    if isinstance(module, nn.Linear):
        return LowRankLinear.from_linear(module, rank, p, **fit)
    return LowRankEmbedding.from_embedding(module, rank, p, **fit)


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
