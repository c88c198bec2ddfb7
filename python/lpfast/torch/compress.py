"""Compress a torch model: replace chosen nn.Linear / nn.Embedding modules by lpfast layers.

Rules map a module-name pattern to a method and its options::

    report = lpfast.torch.compress(model, {
        "bert.embeddings.word_embeddings": {"method": "lowrank", "ratio": 4, "p": 1.0},
        "*.layer.0.intermediate.dense": {"method": "doped_kron", "ratio": 4},
    })
    print(report)

Methods are looked up in a registry (:func:`register_method`): ``"lowrank"``,
``"projective"``, ``"doped_kron"`` and ``"auto"`` are built in. ``"auto"`` runs
:func:`lpfast.plan_compression` on the layer (optionally usage-weighted, e.g. by token
counts) and builds the winner: a :class:`RowDopedEmbedding` / :class:`RowDopedLinear` when
it stores exact rows, else the equivalent existing layer; the plan's ranked table goes into
the report. Other methods plug in by registering a function
``fn(name, module, spec) -> nn.Module`` that may itself call the built-in ones
(``METHODS["lowrank"](name, module, spec)``).

Counting: ``params_before`` / ``params_after`` count ``module.parameters()`` (what an
optimizer sees; a Linear's bias included), as ``ratio`` does. Integer index buffers (the
exact-row indices and projective labels of row-doped and projective layers, the CSR
indices of doped Kronecker layers) are stored numbers too: ``indices_after`` counts them
and ``stored_after = params_after + indices_after``. The built-in ``"lowrank"``,
``"projective"`` and ``"doped_kron"`` budgets hold ``params_after`` to the ratio (as
before); ``"auto"`` follows the planner, whose budget counts every index and label, so it
holds ``stored_after <= params_before / ratio``.
"""

from __future__ import annotations

import contextvars
import fnmatch
import math
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .._validate import as_float, as_int
from .kron import DopedKroneckerLinear
from .lowrank import LowRankEmbedding, LowRankLinear
from .projective import ProjectiveEmbedding
from .row_doped import RowDopedEmbedding, RowDopedLinear

__all__ = ["METHODS", "CompressionReport", "LayerReport", "compress", "parse_rule",
           "register_method"]

#: A compression method: ``fn(name, module, spec) -> new module``. ``spec`` is the rule's
#: dict (``"method"`` included); the function raises ValueError/TypeError naming the option.
Method = Callable[[str, nn.Module, Mapping[str, Any]], nn.Module]
Rules = Union[Mapping[str, Union[Mapping[str, Any], str]], Iterable[tuple[str, Any]]]

METHODS: dict[str, Method] = {}

#: The progress callable of the running :func:`compress` call (methods may report through it).
_PROGRESS: contextvars.ContextVar[Optional[Callable[[str], Any]]] = contextvars.ContextVar(
    "lpfast_compress_progress", default=None)


def register_method(name: str, fn: Method, *, replace: bool = False) -> None:
    """Make ``fn`` available as ``{"method": name}`` in :func:`compress` rules.

    Parameters
    ----------
    name : str
    fn : callable(name: str, module: nn.Module, spec: Mapping) -> nn.Module
        Builds the replacement of ``module`` (the module called ``name`` in the model)
        from the rule ``spec``. The report's numbers are measured on what it returns.
    replace : bool
        Allow overriding a registered method.
    """
    if not isinstance(name, str) or not name:
        msg = f"name: expected a non-empty str, got {name!r}"
        raise TypeError(msg)
    if not callable(fn):
        msg = f"fn: expected a callable(name, module, spec), got {type(fn).__name__}"
        raise TypeError(msg)
    if name in METHODS and not replace:
        msg = f"name: method {name!r} is already registered (pass replace=True)"
        raise ValueError(msg)
    METHODS[name] = fn


# -- sizing -----------------------------------------------------------------------------------

def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _budget(name: str, module: nn.Module, spec: Mapping[str, Any]) -> float:
    """Parameters the replacement may hold: the module's own divided by ``spec["ratio"]``."""
    ratio = as_float(spec["ratio"], f"rules[{name!r}]['ratio']", low=0.0)
    if not ratio > 1:
        msg = f"rules[{name!r}]['ratio']: expected a compression ratio > 1, got {ratio}"
        raise ValueError(msg)
    return _n_params(module) / ratio


def _too_small(name: str, spec: Mapping[str, Any], what: str) -> ValueError:
    return ValueError(f"rules[{name!r}]['ratio']: {spec['ratio']} leaves no room for {what}; "
                      f"lower the ratio")


def _spec_keys(name: str, spec: Mapping[str, Any], allowed: set[str], size: tuple[str, ...]) -> None:
    """Unknown options are errors; exactly one of the ``size`` options must be given."""
    extra = set(spec) - allowed - {"method"}
    if extra:
        msg = (f"rules[{name!r}]: unknown option(s) {sorted(extra)} for method "
               f"{spec['method']!r} (allowed: {sorted(allowed)})")
        raise ValueError(msg)
    given = [k for k in size if k in spec]
    if len(given) != 1:
        msg = f"rules[{name!r}]: give exactly one of {list(size)}, got {given or 'none'}"
        raise ValueError(msg)


def _lowrank(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "lowrank", "ratio": r | "rank": k, "p": 1.0, "fit": {...}}``."""
    _spec_keys(name, spec, {"ratio", "rank", "p", "fit"}, ("ratio", "rank"))
    p = spec.get("p", 1.0)
    fit = dict(spec.get("fit", {}))
    if isinstance(module, nn.Linear):
        m, n = module.out_features, module.in_features
        extra = 0 if module.bias is None else m
    elif isinstance(module, nn.Embedding):
        m, n, extra = module.num_embeddings, module.embedding_dim, 0
    else:
        msg = f"rules[{name!r}]: method 'lowrank' takes nn.Linear or nn.Embedding, got {type(module).__name__}"
        raise TypeError(msg)
    if "rank" in spec:
        rank = as_int(spec["rank"], f"rules[{name!r}]['rank']", low=1, high=min(m, n))
    else:
        rank = math.floor((_budget(name, module, spec) - extra) / (m + n))
        if rank < 1:
            raise _too_small(name, spec, f"a rank-1 factorization of {name}")
        rank = min(rank, min(m, n))
    if isinstance(module, nn.Linear):
        return LowRankLinear.from_linear(module, rank, p, **fit)
    return LowRankEmbedding.from_embedding(module, rank, p, **fit)


def _projective(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "projective", "ratio": r | "dim": j, "n_subspaces": 4, "p": 2.0,
    "seed": 0, "n_init": 10, "fit": {...}}``."""
    _spec_keys(name, spec, {"ratio", "dim", "n_subspaces", "p", "seed", "n_init", "fit"},
               ("ratio", "dim"))
    if not isinstance(module, nn.Embedding):
        msg = f"rules[{name!r}]: method 'projective' takes nn.Embedding, got {type(module).__name__}"
        raise TypeError(msg)
    n, d = module.num_embeddings, module.embedding_dim
    k = as_int(spec.get("n_subspaces", 4), f"rules[{name!r}]['n_subspaces']", low=1, high=n)
    if "dim" in spec:
        j = as_int(spec["dim"], f"rules[{name!r}]['dim']", low=1, high=d - 1)
    else:
        j = math.floor(_budget(name, module, spec) / (n + k * d))
        if j < 1:
            raise _too_small(name, spec, f"{k} subspaces of dimension 1")
        j = min(j, d - 1, n // k)
    fit = dict(spec.get("fit", {}))
    fit.setdefault("seed", spec.get("seed", 0))
    if "n_init" in spec:
        fit["n_init"] = spec["n_init"]
    return ProjectiveEmbedding.from_embedding(module, k, j, spec.get("p", 2.0), **fit)


def _doped_kron(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "doped_kron", "ratio": r | "density": d, "a_shape": None, "b_shape": None,
    "rank": 1, "n_iter": 3, "cmr": 0.0}``."""
    _spec_keys(name, spec, {"ratio", "density", "a_shape", "b_shape", "rank", "n_iter", "cmr"},
               ("ratio", "density"))
    if not isinstance(module, nn.Linear):
        msg = f"rules[{name!r}]: method 'doped_kron' takes nn.Linear, got {type(module).__name__}"
        raise TypeError(msg)
    kw = {k: spec[k] for k in ("a_shape", "b_shape", "rank", "n_iter", "cmr") if k in spec}
    if "ratio" in spec:
        bias = 0 if module.bias is None else module.out_features
        weight_budget = math.floor(_budget(name, module, spec) - bias)
        if weight_budget < 2:
            raise _too_small(name, spec, "Kronecker factors")
        kw["ratio"] = module.weight.numel() / weight_budget
        try:
            return DopedKroneckerLinear.from_linear(module, **kw)
        except ValueError as e:
            if str(e).startswith("ratio:"):
                raise _too_small(name, spec, "the Kronecker factors") from e
            raise
    return DopedKroneckerLinear.from_linear(module, density=spec["density"], **kw)


# -- auto: the planner ---------------------------------------------------------------------------

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
    from ..row_doped import usage_weights

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


def _seq(name: str, key: str, value: Any, conv: Callable[[Any], Any]) -> list[Any]:
    """A list from a sequence, one value, or a '/'-separated string (``"1/1.5"``)."""
    if isinstance(value, str):
        items: list[Any] = [v for v in value.replace(" ", "/").split("/") if v]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        return [conv(v) for v in items]
    except (TypeError, ValueError) as e:
        msg = f"rules[{name!r}][{key!r}]: cannot read {value!r} ({e})"
        raise ValueError(msg) from e


def _planner_ratio(size: int, budget: int) -> float:
    """A ratio with ``floor(size / ratio) == budget`` exactly (the planner's budget rule)."""
    ratio = size / budget
    while math.floor(size / ratio) < budget:
        ratio = float(np.nextafter(ratio, 0.0))
    return ratio


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


def _auto(name: str, module: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``{"method": "auto", "ratio": r, "counts" | "weights": ..., "power": 1.0,
    "floor": 1.0, "candidates": ..., "p_values": ..., "k_values": ..., "doping": "both",
    "seed": 0, "refit": True, "layer": "auto"}``."""
    from ..planner import plan_compression

    _spec_keys(name, spec, _AUTO_OPTIONS, ("ratio",))
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.sparse:
            msg = (f"rules[{name!r}]: method 'auto' does not support max_norm or sparse=True "
                   f"embeddings")
            raise ValueError(msg)
        extra = 0
    elif isinstance(module, nn.Linear):
        extra = 0 if module.bias is None else module.out_features
    else:
        msg = (f"rules[{name!r}]: method 'auto' takes nn.Linear or nn.Embedding, "
               f"got {type(module).__name__}")
        raise TypeError(msg)
    E = module.weight.detach()
    n, d = E.shape
    weight_budget = math.floor(_budget(name, module, spec) - extra)
    if weight_budget < 1:
        raise _too_small(name, spec, f"any factorization of {name}")
    layer = spec.get("layer", "auto")
    if layer not in ("auto", "row_doped"):
        msg = f"rules[{name!r}]['layer']: expected 'auto' or 'row_doped', got {layer!r}"
        raise ValueError(msg)
    kw: dict[str, Any] = {"seed": spec.get("seed", 0), "refit": spec.get("refit", True),
                          "weights": _auto_weights(name, spec, n)}
    if spec.get("candidates") is not None:
        kw["candidates"] = _seq(name, "candidates", spec["candidates"], lambda c: c)
    if "p_values" in spec:
        kw["p_values"] = _seq(name, "p_values", spec["p_values"], float)
    if "k_values" in spec:
        kw["k_values"] = _seq(name, "k_values", spec["k_values"], int)
    doping = spec.get("doping", "both")
    if doping not in ("both", True, False):
        msg = f"rules[{name!r}]['doping']: expected 'both', True (doped only) or False, got {doping!r}"
        raise ValueError(msg)
    kw["doping"] = (False, True) if doping == "both" else (doping,)
    progress = _PROGRESS.get()

    def report(row: dict[str, Any]) -> None:
        if progress is not None:
            progress(f"      plan [{row['index']}/{row['total']}] {row['candidate']:<20} "
                     f"dim {row['rank']:4d}  exact rows {row['n_exact']:6d}  "
                     f"error {row['error']:.5f}  ({row['seconds']:.2f} s)")

    def fit(budget: int) -> Any:
        try:
            return plan_compression(E, _planner_ratio(n * d, budget), callback=report, **kw)
        except ValueError as e:
            if str(e).startswith("ratio:"):
                raise _too_small(name, spec, f"any candidate on {name}") from e
            raise ValueError(f"rules[{name!r}]: {e}") from e
        except TypeError as e:
            raise TypeError(f"rules[{name!r}]: {e}") from e

    sweep_budgets = []
    if spec.get("sweep") is not None:
        for r in _seq(name, "sweep", spec["sweep"], float):
            if not r > 1:
                msg = f"rules[{name!r}]['sweep']: expected compression ratios > 1, got {r}"
                raise ValueError(msg)
            b = math.floor(_budget(name, module, {"ratio": r}) - extra)
            if b < 1 or r == spec["ratio"]:
                continue
            sweep_budgets.append(b)
    plan = fit(weight_budget)
    sweep = [plan]
    for b in sweep_budgets:
        try:
            sweep.append(fit(b))
        except ValueError as e:
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


register_method("lowrank", _lowrank)
register_method("projective", _projective)
register_method("doped_kron", _doped_kron)
register_method("auto", _auto)


# -- report -----------------------------------------------------------------------------------

@dataclass
class LayerReport:
    """One replaced module.

    Attributes
    ----------
    name : str           the module's qualified name in the model
    method : str         the rule's method (``"auto"`` for the planner)
    before, after : str  module reprs
    params_before, params_after : int
        ``sum(p.numel())`` over the old and the new module's parameters (integer buffers
        such as CSR indices, exact-row indices or labels not counted; see ``indices_after``).
    relative_error : float
        ``||W - W_new||_F / ||W||_F`` of the weight matrix (float64; biases are copied).
    seconds : float      fit time
    indices_after : int
        Numbers in the new module's integer buffers (exact-row indices, projective labels,
        CSR indices): stored, not trained.
    plan : lpfast.Plan or None
        The planner's result (method ``"auto"``): ranked table (``plan.rows``,
        ``str(plan)``) and the best fit.
    sweep : list of lpfast.Plan or None
        With the ``"auto"`` option ``sweep``: the plans at every ratio (``plan`` among
        them), by increasing ratio.
    """

    name: str
    method: str
    before: str
    after: str
    params_before: int
    params_after: int
    relative_error: float
    seconds: float
    indices_after: int = 0
    plan: Any = None
    sweep: Any = None

    @property
    def ratio(self) -> float:
        """``params_before / params_after``."""
        return self.params_before / max(self.params_after, 1)

    @property
    def stored_after(self) -> int:
        """Every number the new module stores: ``params_after + indices_after``."""
        return self.params_after + self.indices_after

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serializable); the plan as its rows, budget and ratio."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("plan", "sweep")}
        out.update(ratio=self.ratio, stored_after=self.stored_after,
                   plan=None if self.plan is None else self.plan.to_dict(),
                   sweep=None if self.sweep is None else [p.to_dict() for p in self.sweep])
        return out


@dataclass
class CompressionReport:
    """What :func:`compress` did: per-layer rows and model totals."""

    layers: list[LayerReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)

    @property
    def indices_after(self) -> int:
        return sum(r.indices_after for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serializable)."""
        return {"layers": [r.to_dict() for r in self.layers],
                "params_before": self.params_before, "params_after": self.params_after,
                "indices_after": self.indices_after,
                "model_params_before": self.model_params_before,
                "model_params_after": self.model_params_after}

    def __str__(self) -> str:
        w = max([len(r.name) for r in self.layers] + [5])
        lines = [f"{'layer':<{w}}  {'method':<10} {'params':>10} -> {'after':>9} {'ratio':>6}  "
                 f"{'+index':>7}  {'rel.err':>8}  {'fit s':>6}"]
        for r in self.layers:
            lines.append(f"{r.name:<{w}}  {r.method:<10} {r.params_before:>10} -> "
                         f"{r.params_after:>9} {r.ratio:>5.2f}x  {r.indices_after:>7}  "
                         f"{r.relative_error:>8.4f}  {r.seconds:>6.2f}")
        total = self.model_params_before / max(self.model_params_after, 1)
        lines.append(f"model: {self.model_params_before} -> {self.model_params_after} parameters "
                     f"({total:.2f}x)")
        if self.indices_after:
            lines.append(f"(+index: integer buffers of the new layers, {self.indices_after} in all, "
                         f"not parameters)")
        for r in self.layers:
            if r.plan is not None:
                lines += ["", f"{r.name}: {r.plan}"]
        return "\n".join(lines)


def _n_indices(module: nn.Module) -> int:
    return sum(b.numel() for b in module.buffers()
               if not (b.is_floating_point() or b.is_complex() or b.dtype == torch.bool))


def _weight(module: nn.Module) -> torch.Tensor:
    if hasattr(module, "dense_weight"):
        return module.dense_weight()
    return module.weight.detach()


def _relative_error(old: nn.Module, new: nn.Module) -> float:
    W = old.weight.detach().double()
    diff = torch.linalg.norm(W - _weight(new).double())
    norm = torch.linalg.norm(W)
    return float(diff / norm) if norm > 0 else float(diff)


# -- compress ---------------------------------------------------------------------------------

def _normalize_rules(rules: Rules) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(rules, Mapping):
        items = list(rules.items())
    else:
        try:
            items = [tuple(r) for r in rules]
        except TypeError:
            msg = f"rules: expected a mapping pattern -> spec, got {type(rules).__name__}"
            raise TypeError(msg) from None
    if not items:
        msg = "rules: no rule given"
        raise ValueError(msg)
    out = []
    for item in items:
        if len(item) != 2 or not isinstance(item[0], str):
            msg = f"rules: expected (pattern, spec) pairs with str patterns, got {item!r}"
            raise TypeError(msg)
        pattern, spec = item
        if isinstance(spec, str):
            spec = parse_rule(f"{pattern}={spec}")[1]
        if not isinstance(spec, Mapping):
            msg = f"rules[{pattern!r}]: expected a dict like {{'method': 'lowrank', 'ratio': 4}}, got {spec!r}"
            raise TypeError(msg)
        method = spec.get("method")
        if method not in METHODS:
            msg = f"rules[{pattern!r}]['method']: expected one of {sorted(METHODS)}, got {method!r}"
            raise ValueError(msg)
        out.append((pattern, dict(spec)))
    return out


def compress(model: nn.Module, rules: Rules, *, strict: bool = True,
             progress: Optional[Callable[[str], Any]] = None) -> CompressionReport:
    """Replace the nn.Linear / nn.Embedding modules named by ``rules`` by compressed layers,
    in place.

    Parameters
    ----------
    model : nn.Module (CPU, float32/float64 parameters in the matched modules)
    rules : mapping pattern -> spec, or iterable of (pattern, spec)
        ``pattern`` is an ``fnmatch`` pattern on qualified module names
        (``"bert.embeddings.word_embeddings"``, ``"*.intermediate.dense"``); a module takes
        the first rule that matches it. ``spec`` is a dict with ``"method"`` (a key of
        :data:`METHODS`) and its options, or the short form ``"METHOD:RATIO[:k=v,...]"``
        (:func:`parse_rule`). Built-in methods:

        * ``"lowrank"`` (Linear, Embedding): ``ratio`` or ``rank``; ``p`` (default 1.0,
          2.0 = SVD); ``fit`` (kwargs of ``lpfast.lp_subspace``).
        * ``"projective"`` (Embedding): ``ratio`` or ``dim``; ``n_subspaces`` (default 4),
          ``p`` (2.0), ``seed`` (0), ``n_init``, ``fit`` (kwargs of ``lpfast.k_subspaces``).
        * ``"doped_kron"`` (Linear): ``ratio`` or ``density``; ``a_shape``/``b_shape``
          (default: chosen by fit), ``rank`` (1), ``n_iter`` (3), ``cmr`` (0.0).
        * ``"auto"`` (Linear, Embedding): ``ratio``; :func:`lpfast.plan_compression` ranks
          SVD, lp and k-subspace fits with and without row doping at the layer's budget
          and the winner becomes the layer: :class:`RowDopedEmbedding` /
          :class:`RowDopedLinear` when it stores exact rows (always with
          ``layer="row_doped"``), else the existing layer holding the same numbers
          (``LowRankEmbedding``/``LowRankLinear``, ``ProjectiveEmbedding``; a projective
          Linear stays a ``RowDopedLinear`` with no exact rows). Options: ``counts`` (token
          counts: a tensor, array or ``.npy``/``.pt`` path, one per row, turned into
          weights by ``lpfast.usage_weights(counts, power, floor)``; ``power`` 1.0,
          ``floor`` 1.0) or ``weights`` (row weights as such); ``candidates`` (list, or
          ``"svd/lp:1/projective:5"``), ``p_values``, ``k_values`` (as the planner's,
          e.g. ``"1/1.5"``), ``doping`` (``"both"``, True = doped only, False = none),
          ``seed`` (0), ``refit`` (True), ``layer`` (``"auto"`` or ``"row_doped"``),
          ``sweep`` (more layer ratios to plan for comparison only, e.g. ``"4/16"``: the
          report row's ``sweep`` holds every plan, for an error-vs-ratio plot).
          Its budget counts exact-row indices and labels (``stored_after``); the report
          row carries the plan (``row.plan``, printed under the table).

        ``ratio``: the module's parameter count (bias included) over the replacement's
        (the largest rank/dimension/doping that fits the budget is used). For a Linear
        the bias is copied, so the weight gets the budget less the bias.
    strict : bool
        A pattern matching no Linear/Embedding is an error (default), else ignored.
    progress : callable(str), optional
        Called with a line before and after each layer (e.g. ``print``), and by
        ``"auto"`` with each planner candidate as it finishes.

    Returns
    -------
    CompressionReport
        Per layer: name, method, params before/after, index buffers after, relative
        Frobenius error of the weight, fit seconds, the plan (``"auto"``); plus the
        model's parameter totals before and after.

    Raises
    ------
    ValueError
        A rule matching nothing (``strict``), a module whose weight is shared with another
        module (tied embeddings: untie first), an impossible ratio; nothing is replaced then
        unless the error comes from a later layer's fit.
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    norm_rules = _normalize_rules(rules)
    candidates = [(n, m) for n, m in model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Embedding)) and n]
    chosen: list[tuple[str, nn.Module, dict[str, Any]]] = []
    used = set()
    for name, module in candidates:
        for i, (pattern, spec) in enumerate(norm_rules):
            if fnmatch.fnmatchcase(name, pattern):
                chosen.append((name, module, spec))
                used.add(i)
                break
    if strict:
        for i, (pattern, _) in enumerate(norm_rules):
            if i not in used:
                names = ", ".join(n for n, _ in candidates[:8])
                msg = (f"rules: pattern {pattern!r} matches no nn.Linear/nn.Embedding of the model "
                       f"(some are: {names}{', ...' if len(candidates) > 8 else ''})")
                raise ValueError(msg)
    owners: dict[int, list[str]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(mname)
    for name, module, _ in chosen:
        shared = set(owners.get(id(module.weight), [])) - {name}
        if shared:
            msg = (f"rules: {name}.weight is shared with {sorted(shared)} (tied weights); "
                   f"untie them first or leave {name} out")
            raise ValueError(msg)

    report = CompressionReport(model_params_before=_n_params(model))
    token = _PROGRESS.set(progress)
    try:
        _compress_layers(model, chosen, report, progress)
    finally:
        _PROGRESS.reset(token)
    report.model_params_after = _n_params(model)
    return report


def _show(value: Any) -> Any:
    """An option for a progress line: arrays and tensors by shape, not by content."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"<{type(value).__name__} {tuple(value.shape)}>"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)}>"
    return value


def _compress_layers(model: nn.Module, chosen: list[tuple[str, nn.Module, dict[str, Any]]],
                     report: CompressionReport, progress: Optional[Callable[[str], Any]]) -> None:
    for i, (name, module, spec) in enumerate(chosen):
        if progress is not None:
            opts = {k: _show(v) for k, v in spec.items() if k != "method"}
            progress(f"[{i + 1}/{len(chosen)}] {name}: {module} -> {spec['method']} {opts}")
        t0 = time.perf_counter()
        new = METHODS[spec["method"]](name, module, spec)
        seconds = time.perf_counter() - t0
        if not isinstance(new, nn.Module):
            msg = f"rules[{name!r}]: method {spec['method']!r} returned {type(new).__name__}, not an nn.Module"
            raise TypeError(msg)
        new.train(module.training)
        plan = new.__dict__.pop("_lpfast_plan", None)
        sweep = new.__dict__.pop("_lpfast_sweep", None)
        row = LayerReport(name, spec["method"], repr(module), repr(new), _n_params(module),
                          _n_params(new), _relative_error(module, new), seconds,
                          _n_indices(new), plan, sweep)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        report.layers.append(row)
        if progress is not None:
            idx = f" + {row.indices_after} indices" if row.indices_after else ""
            progress(f"      {row.params_before} -> {row.params_after} parameters{idx} "
                     f"({row.ratio:.2f}x), relative error {row.relative_error:.4f}, {seconds:.2f} s")


# -- short rule form --------------------------------------------------------------------------

def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    parts = low.split("x")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return (int(parts[0]), int(parts[1]))
    return text


def parse_rule(text: str) -> tuple[str, dict[str, Any]]:
    """``"PATTERN=METHOD:RATIO[:key=value,...]"`` -> ``(pattern, spec)``.

    Values are parsed as int, float, bool, ``AxB`` shapes (``a_shape=16x8``) or strings;
    ``RATIO`` may be empty when a size option is given (``lowrank::rank=8``).

    Examples
    --------
    >>> parse_rule("*.word_embeddings=lowrank:4:p=1.5")
    ('*.word_embeddings', {'method': 'lowrank', 'ratio': 4, 'p': 1.5})
    """
    if not isinstance(text, str):
        msg = f"rule: expected a str 'PATTERN=METHOD:RATIO[:key=value,...]', got {type(text).__name__}"
        raise TypeError(msg)
    pattern, eq, rhs = text.partition("=")
    method, _, rest = rhs.partition(":")
    ratio, _, opts = rest.partition(":")
    if not eq or not pattern or not method:
        msg = f"rule: expected 'PATTERN=METHOD:RATIO[:key=value,...]', got {text!r}"
        raise ValueError(msg)
    spec: dict[str, Any] = {"method": method}
    if ratio:
        spec["ratio"] = _value(ratio)
        if not isinstance(spec["ratio"], (int, float)):
            msg = f"rule: ratio {ratio!r} in {text!r} is not a number"
            raise ValueError(msg)
    for opt in filter(None, opts.split(",")):
        key, eq, val = opt.partition("=")
        if not eq or not key:
            msg = f"rule: option {opt!r} in {text!r} is not key=value"
            raise ValueError(msg)
        spec[key] = _value(val)
    return pattern, spec
