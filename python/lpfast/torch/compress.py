"""Compress a torch model: replace chosen nn.Linear / nn.Embedding modules by lpfast layers.

Rules map a module-name pattern to a method and its options::

    report = lpfast.torch.compress(model, {
        "bert.embeddings.word_embeddings": {"method": "lowrank", "ratio": 4, "p": 1.0},
        "*.layer.0.intermediate.dense": {"method": "doped_kron", "ratio": 4},
    })
    print(report)

Methods are looked up in a registry (:func:`register_method`): ``"lowrank"``,
``"projective"`` and ``"doped_kron"`` are built in; a planner (an ``"auto"`` method, say)
plugs in by registering a function ``fn(name, module, spec) -> nn.Module`` that may itself
call the built-in ones (``METHODS["lowrank"](name, module, spec)``), or by producing rules
(exact module names are valid patterns) for this function.
"""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .._validate import as_float, as_int
from .layers import DopedKroneckerLinear, LowRankEmbedding, LowRankLinear, ProjectiveEmbedding

__all__ = ["METHODS", "CompressionReport", "LayerReport", "compress", "parse_rule",
           "register_method"]

#: A compression method: ``fn(name, module, spec) -> new module``. ``spec`` is the rule's
#: dict (``"method"`` included); the function raises ValueError/TypeError naming the option.
Method = Callable[[str, nn.Module, Mapping[str, Any]], nn.Module]
Rules = Union[Mapping[str, Union[Mapping[str, Any], str]], Iterable[tuple[str, Any]]]

METHODS: dict[str, Method] = {}


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


register_method("lowrank", _lowrank)
register_method("projective", _projective)
register_method("doped_kron", _doped_kron)


# -- report -----------------------------------------------------------------------------------

@dataclass
class LayerReport:
    """One replaced module.

    Attributes
    ----------
    name : str           the module's qualified name in the model
    method : str
    before, after : str  module reprs
    params_before, params_after : int
        ``sum(p.numel())`` over the old and the new module's parameters (buffers such as
        CSR indices or labels not counted).
    relative_error : float
        ``||W - W_new||_F / ||W||_F`` of the weight matrix (float64; biases are copied).
    seconds : float      fit time
    """

    name: str
    method: str
    before: str
    after: str
    params_before: int
    params_after: int
    relative_error: float
    seconds: float

    @property
    def ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)


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

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serializable)."""
        return {"layers": [dict(asdict(r), ratio=r.ratio) for r in self.layers],
                "params_before": self.params_before, "params_after": self.params_after,
                "model_params_before": self.model_params_before,
                "model_params_after": self.model_params_after}

    def __str__(self) -> str:
        w = max([len(r.name) for r in self.layers] + [5])
        lines = [f"{'layer':<{w}}  {'method':<10} {'params':>10} -> {'after':>9} {'ratio':>6}  "
                 f"{'rel.err':>8}  {'fit s':>6}"]
        for r in self.layers:
            lines.append(f"{r.name:<{w}}  {r.method:<10} {r.params_before:>10} -> "
                         f"{r.params_after:>9} {r.ratio:>5.2f}x  {r.relative_error:>8.4f}  "
                         f"{r.seconds:>6.2f}")
        total = self.model_params_before / max(self.model_params_after, 1)
        lines.append(f"model: {self.model_params_before} -> {self.model_params_after} parameters "
                     f"({total:.2f}x)")
        return "\n".join(lines)


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

        ``ratio``: the module's parameter count (bias included) over the replacement's
        (the largest rank/dimension/doping that fits the budget is used).
    strict : bool
        A pattern matching no Linear/Embedding is an error (default), else ignored.
    progress : callable(str), optional
        Called with a line before and after each layer (e.g. ``print``).

    Returns
    -------
    CompressionReport
        Per layer: name, method, params before/after, relative Frobenius error of the weight,
        fit seconds; plus the model's parameter totals before and after.

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
    for i, (name, module, spec) in enumerate(chosen):
        if progress is not None:
            progress(f"[{i + 1}/{len(chosen)}] {name}: {module} -> {spec['method']} "
                     f"{ {k: v for k, v in spec.items() if k != 'method'} }")
        t0 = time.perf_counter()
        new = METHODS[spec["method"]](name, module, spec)
        seconds = time.perf_counter() - t0
        if not isinstance(new, nn.Module):
            msg = f"rules[{name!r}]: method {spec['method']!r} returned {type(new).__name__}, not an nn.Module"
            raise TypeError(msg)
        new.train(module.training)
        row = LayerReport(name, spec["method"], repr(module), repr(new), _n_params(module),
                          _n_params(new), _relative_error(module, new), seconds)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        report.layers.append(row)
        if progress is not None:
            progress(f"      {row.params_before} -> {row.params_after} parameters "
                     f"({row.ratio:.2f}x), relative error {row.relative_error:.4f}, {seconds:.2f} s")
    report.model_params_after = _n_params(model)
    return report


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
