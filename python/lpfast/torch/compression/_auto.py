"""The ``"auto"`` compression method (internal): :func:`lpfast.plan_compression` ranks
SVD, lp and k-subspace fits, with and without exact rows, at the layer's budget, and the
winner becomes the layer (``RowDoped*`` when it stores exact rows, else the existing layer
holding the same numbers). Options: row weights from token counts or given, the planner's
candidates and grids, a sweep over more ratios (for error-vs-ratio plots).

An nn.Linear whose rule gives none of the planner's options goes to ``_select.py``
instead: low rank, low rank + sparse and doped Kronecker chosen by output error and speed.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ... import plan_compression, usage_weights
from .._checks import compression_ratio
from ._registry import PROGRESS
from ._rules import exact_ratio, sequence, spec_keys, too_small, weight_budget
from ._select import select, wants_selection
from ..layers.lowrank import LowRankEmbedding, LowRankLinear
from ..layers.projective import ProjectiveEmbedding
from ..layers.row_doped import RowDopedEmbedding, RowDopedLinear

__all__ = ["auto"]

_AUTO_OPTIONS = {"ratio", "counts", "weights", "power", "floor", "candidates", "p_values",
                 "k_values", "doping", "seed", "refit", "layer", "sweep"}


def _load_vector(name: str, key: str, value: Any) -> np.ndarray:
    """A 1-d array from a tensor, an array-like, or a .npy / .pt / .pth file path."""
    where = f"rules[{name!r}][{key!r}]"
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            msg = f"{where}: no such file {path!r}"
            raise ValueError(msg)
        low = path.lower()
        if low.endswith(".npy"):
            value = np.load(path, allow_pickle=False)
        elif low.endswith((".pt", ".pth")):
            value = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                msg = f"{where}: {path!r} holds a {type(value).__name__}, expected one tensor"
                raise TypeError(msg)
        else:
            msg = f"{where}: expected a .npy, .pt or .pth file, got {path!r}"
            raise ValueError(msg)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        msg = (f"{where}: expected numbers (an array, tensor or file path), "
               f"got {type(value).__name__}")
        raise TypeError(msg) from e
    return arr


def _auto_weights(name: str, spec: Mapping[str, Any], n: int) -> Optional[np.ndarray]:
    if "counts" in spec and "weights" in spec:
        msg = f"rules[{name!r}]: give 'counts' or 'weights', not both"
        raise ValueError(msg)
    if ("power" in spec or "floor" in spec) and "counts" not in spec:
        msg = f"rules[{name!r}]: 'power' and 'floor' transform 'counts'; no counts given"
        raise ValueError(msg)
    key = "counts" if "counts" in spec else "weights" if "weights" in spec else None
    if key is None or spec[key] is None:
        return None
    arr = _load_vector(name, key, spec[key])
    if arr.shape != (n,):
        msg = (f"rules[{name!r}][{key!r}]: expected shape ({n},) (one per row of the weight), "
               f"got {arr.shape}")
        raise ValueError(msg)
    if key == "weights":
        return arr
    try:
        return usage_weights(arr, power=spec.get("power", 1.0), floor=spec.get("floor", 1.0))
    except (ValueError, TypeError) as e:
        raise type(e)(f"rules[{name!r}]: {e}") from e


def _layer_from_plan(module: nn.Module, plan: Any, layer: str) -> nn.Module:
    """The best fit as a layer: RowDoped* if it stores exact rows (or ``layer="row_doped"``),
    else the existing layer storing the same numbers (LowRank*, ProjectiveEmbedding)."""
    best = plan.best
    dtype = module.weight.dtype
    emb = isinstance(module, nn.Embedding)
    undoped = best.n_exact == 0 and layer == "auto"
    with torch.no_grad():
        if undoped and best.method != "projective":
            U, Vt = torch.from_numpy(best.U), torch.from_numpy(best.Vt)
            if emb:
                new = LowRankEmbedding(module.num_embeddings, module.embedding_dim, best.rank,
                                       module.padding_idx, dtype=dtype)
                new.weight.copy_(U)
                new.proj.copy_(Vt)
            else:
                new = LowRankLinear(module.in_features, module.out_features, best.rank,
                                    bias=module.bias is not None, dtype=dtype)
                new.U.copy_(U)
                new.V.copy_(Vt)
                if module.bias is not None:
                    new.bias.copy_(module.bias)
        elif undoped and emb:
            new = ProjectiveEmbedding(module.num_embeddings, module.embedding_dim,
                                      best.n_subspaces, best.rank, module.padding_idx, dtype=dtype)
            new.coef.copy_(torch.from_numpy(best.coefficients))
            new.bases.copy_(torch.from_numpy(np.ascontiguousarray(best.bases.transpose(0, 2, 1))))
            new.labels.copy_(torch.from_numpy(best.labels))
        elif emb:
            new = RowDopedEmbedding.from_row_doped(best, padding_idx=module.padding_idx,
                                                   dtype=dtype)
        else:
            new = RowDopedLinear.from_row_doped(best, module.bias, dtype=dtype)
    new.fit_info = best
    return new


def auto(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "auto", "ratio": r, "counts" | "weights": ..., "power": 1.0,
    "floor": 1.0, "candidates": ..., "p_values": ..., "k_values": ..., "doping": "both",
    "seed": 0, "refit": True, "layer": "auto", "sweep": ...}``; an nn.Linear without
    the planner's options: ``{"method": "auto", "ratio": r, "speedup": s, ...}`` (``_select``)."""
    if wants_selection(name, module, spec):
        return select(name, module, spec)
    spec_keys(name, spec, _AUTO_OPTIONS, ("ratio",))
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.sparse:
            msg = (f"rules[{name!r}]: method 'auto' does not support max_norm or sparse=True "
                   f"embeddings")
            raise ValueError(msg)
    elif not isinstance(module, nn.Linear):
        msg = (f"rules[{name!r}]: method 'auto' takes nn.Linear or nn.Embedding, "
               f"got {type(module).__name__}")
        raise TypeError(msg)
    size = math.floor(weight_budget(name, module, spec))
    if size < 1:
        raise too_small(name, spec, f"any factorization of {name}")
    layer = spec.get("layer", "auto")
    if layer not in ("auto", "row_doped"):
        msg = f"rules[{name!r}]['layer']: expected 'auto' or 'row_doped', got {layer!r}"
        raise ValueError(msg)
    E = module.weight.detach()
    fit = _planner(name, E, _planner_options(name, spec, E.shape[0]))
    sweep_budgets = _sweep_budgets(name, module, spec)
    plan = fit(size)
    sweep = [plan]
    progress = PROGRESS.get()
    for b in sweep_budgets:
        try:
            sweep.append(fit(b))
        except ValueError as e:  # a sweep is for comparison only: a ratio that fails is left out
            if progress is not None:
                progress(f"      sweep: {e}")
    sweep.sort(key=lambda p: p.ratio)
    new = _layer_from_plan(module, plan, layer)
    new._lpfast_plan = plan  # taken into the report by compress (not saved with the model)
    if len(sweep) > 1:
        new._lpfast_sweep = sweep
    if progress is not None:
        b = plan.best_row
        progress(f"      plan: best {b['candidate']} (dim {b['rank']}, {b['n_exact']} exact rows, "
                 f"{b['n_params']} numbers) of {len(plan.rows)} in {plan.seconds:.1f} s")
    return new


def _planner_options(name: str, spec: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The keyword arguments of ``plan_compression`` a rule gives."""
    kw: dict[str, Any] = {"seed": spec.get("seed", 0), "refit": spec.get("refit", True),
                          "weights": _auto_weights(name, spec, n)}
    if spec.get("candidates") is not None:
        kw["candidates"] = sequence(name, "candidates", spec["candidates"], lambda c: c)
    if "p_values" in spec:
        kw["p_values"] = sequence(name, "p_values", spec["p_values"], float)
    if "k_values" in spec:
        kw["k_values"] = sequence(name, "k_values", spec["k_values"], int)
    doping = spec.get("doping", "both")
    if doping not in ("both", True, False):
        msg = f"rules[{name!r}]['doping']: expected 'both', True (doped only) or False, got {doping!r}"
        raise ValueError(msg)
    kw["doping"] = (False, True) if doping == "both" else (doping,)
    return kw


def _sweep_budgets(name: str, module: nn.Module, spec: Mapping[str, Any]) -> list[int]:
    """The weight budgets of the rule's ``sweep`` ratios (other than its own ratio)."""
    budgets = []
    if spec.get("sweep") is not None:
        for r in sequence(name, "sweep", spec["sweep"], float):
            r = compression_ratio(r, f"rules[{name!r}]['sweep']")
            b = math.floor(weight_budget(name, module, {"ratio": r}))
            if b < 1 or r == spec["ratio"]:
                continue
            budgets.append(b)
    return budgets


def _planner(name: str, E: torch.Tensor, kw: dict[str, Any]) -> Callable[[int], Any]:
    """``fit(budget) -> Plan`` of E at exactly ``budget`` numbers, reporting each candidate
    to the running compress call's progress; errors name the rule."""
    n, d = E.shape
    progress = PROGRESS.get()

    def report(row: dict[str, Any]) -> None:
        if progress is not None:
            progress(f"      plan [{row['index']}/{row['total']}] {row['candidate']:<20} "
                     f"dim {row['rank']:4d}  exact rows {row['n_exact']:6d}  "
                     f"error {row['error']:.5f}  ({row['seconds']:.2f} s)")

    def fit(budget: int) -> Any:
        try:
            return plan_compression(E, exact_ratio(n * d, budget), callback=report, **kw)
        except ValueError as e:  # the planner's message names its argument: add the rule
            raise ValueError(f"rules[{name!r}]: {e}") from e
        except TypeError as e:
            raise TypeError(f"rules[{name!r}]: {e}") from e

    return fit
