"""``"auto"`` on an nn.Linear (internal): per layer, fit low rank, low rank + sparse and doped
Kronecker at a parameter budget, measure each candidate's output error on the calibration
inputs and its latency against the dense layer on this CPU, and keep the best one.

Targets (rule options):

* ``ratio`` (``"auto:2"``): the candidates are fit at the budget of that ratio; the lowest
  error among those not slower than the dense layer wins (none is: the lowest error).
* ``speedup`` (``"auto:speedup=1.3"``: at least 1.3x faster than the dense layer): the
  candidates are fit at each of ``ratios`` (default 2/4/8; with a ``ratio`` too, that
  ratio and the larger ones only); the lowest error among those at least that much faster
  wins (none is: the fastest).
* ``sweep`` (``"auto:2:sweep=4/8"``): more ratios fit and measured for comparison only
  (the table and the frontier plot); their candidates are never chosen.

Error: relative err_C = ‖(W − Ŵ) L‖_F² / ‖W L‖_F², C = L Lᵀ the layer's input Gram (its
diagonal with "scale" statistics); without calibration C = I, the squared relative
Frobenius error of the weight. Latency: median seconds per call at ``rows`` input rows
(16) on torch's current thread count, every candidate interleaved with the dense layer
(:func:`lpfast.torch._timing.interleaved_latency`, or the ``timer`` given to compress).
Fits are deterministic; latencies are not, so a choice between candidates of nearly
equal speed may differ between runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..._validate import as_float, as_int
from . import _methods
from .._checks import compression_ratio
from ._registry import PROGRESS, TIMER
from ._rules import n_params, sequence
from ._stats import output_error, stats_of
from ._timing import interleaved_latency

__all__ = ["Candidate", "Selection", "select", "wants_selection"]

#: The fits "auto" chooses among for a Linear, in table order.
CANDIDATES = ("lowrank", "lowrank_sparse", "doped_kron")
_OPTIONS = {"ratio", "speedup", "ratios", "candidates", "rows", "repeats", "sparse_share",
            "ridge", "seed", "sweep"}
#: Options only the planner path of "auto" (lpfast.plan_compression) takes.
_PLANNER_OPTIONS = {"counts", "weights", "power", "floor", "p_values", "k_values", "doping",
                    "refit", "layer"}
_DEFAULT_RATIOS = (2.0, 4.0, 8.0)


@dataclass
class Candidate:
    """One fit "auto" measured for a Linear (a row of the selection table).

    ``ratio``: the layer ratio whose budget it was fit at (parameters, bias included, as
    the rule's ratio); ``params``: its structure (rank, nnz, factor shapes); ``n_params``:
    its parameters; ``error``: relative err_C; ``latency``: seconds per call; ``speedup``:
    the dense layer's latency over this one; ``admissible``: may be chosen (meets the
    target's speed, not a ``sweep`` comparison); ``sweep``: fit for comparison only;
    ``seconds``: fit time.
    """

    method: str
    ratio: float
    params: dict[str, Any]
    n_params: int
    error: float
    latency: float
    speedup: float
    admissible: bool = False
    chosen: bool = False
    seconds: float = 0.0
    sweep: bool = False


@dataclass
class Selection:
    """What "auto" measured and chose for one Linear: :attr:`candidates` and the context.

    ``target``: ``{"ratio": r}`` and/or ``{"speedup": s}``; ``error``: what the errors are
    relative err_C under (``"gram"``, ``"scale"`` or ``"weights"`` = C = I); ``rows``,
    ``threads``: the timed input and torch's thread count; ``dense_latency``: the dense
    layer's seconds per call; ``skipped``: fits the budget had no room for; ``fallback``:
    why the chosen one does not meet the target, if it does not.
    """

    target: dict[str, float]
    error: str
    rows: int
    threads: int
    dense_latency: float
    dense_params: int
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fallback: Optional[str] = None

    @property
    def chosen(self) -> Candidate:
        return next(c for c in self.candidates if c.chosen)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serializable)."""
        return {**{k: v for k, v in asdict(self).items() if k != "candidates"},
                "candidates": [asdict(c) for c in self.candidates]}

    def __str__(self) -> str:
        goal = ", ".join(f"{k} {v:g}" for k, v in self.target.items())
        err = {"gram": "err_C: on the calibration inputs", "scale": "err_C: C = diag(second moments)",
               "weights": "err: weights only (C = I)"}[self.error]
        w = max([len(_structure(c.params)) for c in self.candidates] + [9])
        lines = [f"auto ({goal}; {err}; latency at {self.rows} rows, {self.threads} thread(s), "
                 f"dense {self.dense_latency * 1e6:.1f} us)",
                 f"  {'method':<15} {'ratio':>6}  {'structure':<{w}} {'params':>9} {'error':>9} "
                 f"{'speedup':>8}"]
        for c in self.candidates:
            mark = ("  <- chosen" if c.chosen else "  (sweep)" if c.sweep
                    else "" if c.admissible else "  (too slow)")
            lines.append(f"  {c.method:<15} {c.ratio:>5.2f}x  {_structure(c.params):<{w}} "
                         f"{c.n_params:>9} {c.error:>9.5f} {c.speedup:>7.2f}x{mark}")
        lines += [f"  skipped: {s}" for s in self.skipped]
        if self.fallback:
            lines.append(f"  {self.fallback}")
        return "\n".join(lines)


def _structure(params: Mapping[str, Any]) -> str:
    parts = []
    if "a_shape" in params:
        (m1, n1), (m2, n2) = params["a_shape"], params["b_shape"]
        parts.append(f"{m1}x{n1} (x) {m2}x{n2}")
    parts.append(f"rank {params['rank']}")
    if "nnz" in params:
        parts.append(f"nnz {params['nnz']}")
    return ", ".join(parts)


def _params_of(layer: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if hasattr(layer, "a_shape"):
        out.update(a_shape=tuple(layer.a_shape), b_shape=tuple(layer.b_shape))
    out["rank"] = int(layer.rank)
    if hasattr(layer, "nnz"):
        out["nnz"] = int(layer.nnz)
    return out


def wants_selection(name: str, module: nn.Module, spec: Mapping[str, Any]) -> bool:
    """True when "auto" on ``module`` chooses among :data:`CANDIDATES` (a Linear whose rule
    has none of the planner's options and, if any, these candidates); False: the planner."""
    chooser = set(spec) & (_OPTIONS - {"ratio", "candidates", "seed", "sweep"})
    planner = set(spec) & _PLANNER_OPTIONS
    if spec.get("candidates") is not None:
        names = sequence(name, "candidates", spec["candidates"], str)
        ours = [c in CANDIDATES for c in names]
        if any(ours) and not all(ours):
            msg = (f"rules[{name!r}]['candidates']: {names} mixes the Linear fits {list(CANDIDATES)} "
                   f"with the planner's (svd, lp:P, projective:K); give one kind")
            raise ValueError(msg)
        (chooser if all(ours) else planner).add("candidates")
    if chooser and (planner or not isinstance(module, nn.Linear)):
        what = f"the planner's {sorted(planner)}" if planner else f"a {type(module).__name__}"
        msg = (f"rules[{name!r}]: {sorted(chooser)} choose among Linear fits by error and speed; "
               f"they do not go with {what}")
        raise ValueError(msg)
    return isinstance(module, nn.Linear) and not planner


def _options(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    extra = set(spec) - _OPTIONS - {"method"}
    if extra:
        msg = (f"rules[{name!r}]: unknown option(s) {sorted(extra)} for method 'auto' on an "
               f"nn.Linear (allowed: {sorted(_OPTIONS)})")
        raise ValueError(msg)
    if "ratio" not in spec and "speedup" not in spec:
        msg = (f"rules[{name!r}]: give a target: a ratio ('auto:2') and/or a speed-up over the "
               f"dense layer ('auto:speedup=1.3')")
        raise ValueError(msg)
    where = f"rules[{name!r}]"
    opt: dict[str, Any] = {"ratio": None, "speedup": None}
    if "ratio" in spec:
        opt["ratio"] = compression_ratio(spec["ratio"], f"{where}['ratio']")
    if "speedup" in spec:
        opt["speedup"] = as_float(spec["speedup"], f"{where}['speedup']", low=0.0)
        if not 0 < opt["speedup"] < math.inf:
            msg = f"{where}['speedup']: expected a finite speed-up > 0, got {spec['speedup']!r}"
            raise ValueError(msg)
    if "ratios" in spec and opt["speedup"] is None:
        msg = f"{where}['ratios']: the budgets of a speedup target; this rule has none"
        raise ValueError(msg)
    ratios = [compression_ratio(r, f"{where}['ratios']")
              for r in sequence(name, "ratios", spec.get("ratios", list(_DEFAULT_RATIOS)), float)]
    if opt["speedup"] is None:
        opt["ratios"] = [opt["ratio"]]
    elif opt["ratio"] is None:
        opt["ratios"] = sorted(set(ratios))
    else:
        opt["ratios"] = [opt["ratio"]] + sorted({r for r in ratios if r > opt["ratio"]})
    sweep = sequence(name, "sweep", spec.get("sweep") or [], float)
    opt["sweep"] = sorted({compression_ratio(r, f"{where}['sweep']") for r in sweep} - set(opt["ratios"]))
    opt["candidates"] = sequence(name, "candidates", spec.get("candidates", list(CANDIDATES)), str)
    wrong = [c for c in opt["candidates"] if c not in CANDIDATES]
    if wrong or not opt["candidates"]:
        msg = f"{where}['candidates']: expected some of {list(CANDIDATES)}, got {opt['candidates']}"
        raise ValueError(msg)
    opt["rows"] = as_int(spec.get("rows", 16), f"{where}['rows']", low=1)
    opt["repeats"] = as_int(spec.get("repeats", 5), f"{where}['repeats']", low=1)
    opt["seed"] = as_int(spec.get("seed", 0), f"{where}['seed']", low=0)
    # checked here: a fit that raises is skipped as too big for its budget, so a bad option
    # must not get that far
    opt["fit"] = {k: as_float(spec[k], f"{where}[{k!r}]", low=0.0, high=1.0 if k == "sparse_share" else None)
                  for k in ("sparse_share", "ridge") if k in spec}
    return opt


def _fit(name: str, module: nn.Linear, method: str, ratio: float, fit: Mapping[str, Any]) -> nn.Module:
    """The rule ``{"method": method, "ratio": ratio}`` (lowrank as least squares, p = 2)."""
    spec: dict[str, Any] = {"method": method, "ratio": ratio}
    if "ridge" in fit:
        spec["ridge"] = fit["ridge"]
    if method == "lowrank":
        spec["p"] = 2.0
    if method == "lowrank_sparse" and "sparse_share" in fit:
        spec["sparse_share"] = fit["sparse_share"]
    return getattr(_methods, method)(name, module, spec)


def _latencies(name: str, module: nn.Linear, layers: list[nn.Module], opt: Mapping[str, Any]) -> list[float]:
    g = torch.Generator().manual_seed(opt["seed"])
    x = torch.randn(opt["rows"], module.in_features, generator=g, dtype=module.weight.dtype)
    timer = TIMER.get()
    if timer is None:
        got = interleaved_latency([module, *layers], x, repeats=opt["repeats"])
    else:
        got = list(timer([module, *layers], x))
    if len(got) != len(layers) + 1 or not all(isinstance(t, (int, float)) and 0 < t < math.inf
                                              for t in got):
        msg = (f"timer: expected {len(layers) + 1} positive finite seconds (the dense layer "
               f"{name}, then each candidate), got {got!r}")
        raise ValueError(msg)
    return [float(t) for t in got]


def _choose(sel: Selection, speedup: Optional[float]) -> None:
    need = 1.0 if speedup is None else speedup
    eligible = [c for c in sel.candidates if not c.sweep]
    for c in eligible:
        c.admissible = c.speedup >= need
    ok = [c for c in eligible if c.admissible]
    if ok:
        best = min(ok, key=lambda c: (c.error, c.n_params, c.latency))
    elif speedup is None:
        best = min(eligible, key=lambda c: (c.error, c.latency))
        sel.fallback = "no candidate is as fast as the dense layer: the lowest error is taken"
    else:
        best = min(eligible, key=lambda c: (c.latency, c.error))
        sel.fallback = f"no candidate reaches {speedup:g}x: the fastest is taken"
    best.chosen = True


def select(name: str, module: nn.Linear, spec: Mapping[str, Any]) -> nn.Module:
    """Fit, measure and choose (see the module docstring); returns the chosen layer with
    the :class:`Selection` as ``_lpfast_selection`` (compress moves it into the report).

    Cost: one fit per (method, ratio), one O(out · in²) error each, and the latency blocks.
    """
    opt = _options(name, spec)
    stats = stats_of(name)
    progress = PROGRESS.get()
    W = module.weight.detach()
    fitted: list[tuple[Candidate, nn.Module]] = []
    skipped = []
    for ratio in opt["ratios"] + opt["sweep"]:
        for method in opt["candidates"]:
            t0 = time.perf_counter()
            try:
                layer = _fit(name, module, method, ratio, opt["fit"])
            except ValueError as e:  # the budget has no room for this fit: the others compete
                skipped.append(f"{method} at {ratio:g}x: {e}")
                continue
            cand = Candidate(method, ratio, _params_of(layer), n_params(layer),
                             output_error(W, layer.dense_weight(), stats), math.nan, math.nan,
                             seconds=time.perf_counter() - t0, sweep=ratio in opt["sweep"])
            fitted.append((cand, layer))
            if progress is not None:
                progress(f"      fit {method:<15} at {ratio:g}x  {_structure(cand.params):<36} "
                         f"error {cand.error:.5f}  ({cand.seconds:.2f} s)")
    if not any(not c.sweep for c, _ in fitted):
        msg = f"rules[{name!r}]: no candidate fits the target's budget ({'; '.join(skipped)})"
        raise ValueError(msg)
    lat = _latencies(name, module, [layer for _, layer in fitted], opt)
    sel = Selection({k: opt[k] for k in ("ratio", "speedup") if opt[k] is not None},
                    "weights" if stats is None else stats.kind, opt["rows"],
                    torch.get_num_threads(), lat[0], n_params(module), skipped=skipped)
    for (cand, _), t in zip(fitted, lat[1:]):
        cand.latency, cand.speedup = t, lat[0] / t
        sel.candidates.append(cand)
    _choose(sel, opt["speedup"])
    new = next(layer for cand, layer in fitted if cand.chosen)
    new._lpfast_selection = sel  # taken into the report by compress (not saved with the model)
    if progress is not None:
        c = sel.chosen
        progress(f"      chose {c.method} at {c.ratio:g}x: error {c.error:.5f}, "
                 f"{c.speedup:.2f}x the dense layer's speed")
    return new
