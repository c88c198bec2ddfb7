"""Structured pruning of FFN hidden units: two nn.Linears become two smaller nn.Linears.

For a pair ``first -> act -> second`` (e.g. BERT's ``intermediate.dense``, GELU,
``output.dense``), :func:`prune_ffn` keeps k of the h hidden units by
:func:`lpfast.prune_hidden_units` on the Gram of ``second``'s input (from
:func:`lpfast.torch.calibrate`) and replaces, in place:

* ``first``  by ``nn.Linear(in, k)`` with rows ``W1[K]``, ``b1[K]``;
* ``second`` by ``nn.Linear(k, out)`` with the least-squares refit ``W2'`` and ``b2``.

The result is plain dense nn.Linear modules (fast eager, ``torch.compile``-friendly,
``state_dict``-loadable into a model built with the smaller sizes). Only valid when what
sits between the two Linears acts on each hidden unit separately (GELU, ReLU, dropout):
a module that mixes hidden units (a LayerNorm over the hidden dimension) breaks it.

Pairs: a mapping ``{first pattern: second template}``. The pattern is an fnmatch pattern
on qualified module names; each ``*`` / ``?`` in it captures what it matched, and the
template names the second Linear with ``{}`` (or ``{0}``, ``{1}``, ...) filled by those
captures in order::

    {"encoder.layer.*.intermediate.dense": "encoder.layer.{}.output.dense"}

Exact names work too (no wildcard, no placeholder); :func:`ffn_pairs` lists a BERT-style
model's pairs that way.
"""

from __future__ import annotations

import fnmatch
import re
import string
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ...hidden_prune import hidden_keep_count, prune_hidden_units
from ..._validate import as_float
from ..calibration._running import check_model
from ..calibration.calibrate import Calibration

__all__ = ["PairReport", "PruneReport", "ffn_pairs", "prune_ffn", "resolve_pairs"]


@dataclass
class PairReport:
    """One pruned pair: names, hidden units before/after, relative calibration error of
    ``second``'s output (``tr(D C Dᵀ) / tr(W2 C W2ᵀ)``) with plain selection (``error_before``)
    and after the refit (``error_after``), ``refit`` as in :class:`lpfast.HiddenPrune`,
    parameters of the two Linears before/after, fit seconds."""

    first: str
    second: str
    hidden_before: int
    hidden_after: int
    error_before: float
    error_after: float
    refit: bool
    params_before: int
    params_after: int
    seconds: float


@dataclass
class PruneReport:
    """What :func:`prune_ffn` did: ``pairs`` (a :class:`PairReport` each, model order) and
    the parameter counts of the whole model before and after."""

    pairs: list[PairReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0

    @property
    def params_before(self) -> int:
        """Parameters of the pruned Linears before."""
        return sum(p.params_before for p in self.pairs)

    @property
    def params_after(self) -> int:
        """Parameters of the pruned Linears after."""
        return sum(p.params_after for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": [asdict(p) for p in self.pairs], "params_before": self.params_before,
                "params_after": self.params_after, "model_params_before": self.model_params_before,
                "model_params_after": self.model_params_after}

    def __str__(self) -> str:
        lines = [f"{'first':<40} {'second':<40} {'hidden':>11} {'err plain':>10} {'err refit':>10}"]
        for p in self.pairs:
            lines.append(f"{p.first:<40} {p.second:<40} {p.hidden_before:>5}->{p.hidden_after:<5} "
                         f"{p.error_before:>10.4g} {p.error_after:>10.4g}")
        lines.append(f"pruned Linears: {self.params_before} -> {self.params_after} parameters; "
                     f"model: {self.model_params_before} -> {self.model_params_after}")
        return "\n".join(lines)


def _pattern_regex(pattern: str) -> re.Pattern:
    """fnmatch ``pattern`` as a regex whose groups capture each ``*``, ``?`` and ``[...]``."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("(.*)")
        elif c == "?":
            out.append("(.)")
        elif c == "[" and pattern.find("]", i + 2) > 0:
            j = pattern.find("]", i + 2)
            # fnmatch's own translation of the class keeps its negation rules ("[!0-3]").
            out.append("(" + fnmatch.translate(pattern[i:j + 1])[4:-3] + ")")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _template_fields(template: str, name: str) -> int:
    """How many captures ``template`` uses (``{}`` in order or ``{n}``), checked."""
    auto, top = 0, -1
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        msg = f"pairs[{name!r}]: bad template {template!r}: {e}"
        raise ValueError(msg) from None
    for _, fld, _, _ in parsed:
        if fld is None:
            continue
        if fld == "":
            auto += 1
        elif fld.isdigit():
            top = max(top, int(fld))
        else:
            msg = f"pairs[{name!r}]: template {template!r} may hold only {{}} or {{0}}, {{1}}, ... fields"
            raise ValueError(msg)
    if auto and top >= 0:
        msg = f"pairs[{name!r}]: template {template!r} mixes {{}} and numbered fields"
        raise ValueError(msg)
    return max(auto, top + 1)


def resolve_pairs(model: nn.Module, pairs: Any) -> dict[str, str]:
    """``{first name: second name}`` of every Linear pair ``pairs`` names, in model order.

    Raises ValueError/TypeError for: a pattern matching nothing or no nn.Linear, a template
    with more fields than the pattern has wildcards, a second name that is not a module or
    not an nn.Linear, a first/second of mismatched size (``first.out_features !=
    second.in_features``), a Linear used in two pairs.
    """
    check_model(model, "model")
    if not isinstance(pairs, Mapping) or not pairs:
        msg = ("pairs: expected a non-empty mapping {first pattern: second template}, e.g. "
               "{'encoder.layer.*.intermediate.dense': 'encoder.layer.{}.output.dense'} "
               f"(or ffn_pairs(model)), got {pairs!r}")
        raise TypeError(msg) if not isinstance(pairs, Mapping) else ValueError(msg)
    modules = dict(model.named_modules())
    named = [(n, m) for n, m in modules.items() if n]
    order = {n: i for i, (n, _) in enumerate(named)}
    found: dict[str, str] = {}
    for pattern, template in pairs.items():
        if not isinstance(pattern, str) or not isinstance(template, str):
            msg = f"pairs: keys and values must be str, got {pattern!r}: {template!r}"
            raise TypeError(msg)
        regex = _pattern_regex(pattern)
        n_fields = _template_fields(template, pattern)
        hits = [(n, regex.fullmatch(n)) for n, _ in named]
        hits = [(n, mt) for n, mt in hits if mt]
        if not hits:
            some = ", ".join(n for n, m in named if isinstance(m, nn.Linear))
            msg = f"pairs: pattern {pattern!r} matches no module of the model (its Linears: {some[:200]})"
            raise ValueError(msg)
        linear_hits = [(n, mt) for n, mt in hits if isinstance(modules[n], nn.Linear)]
        if not linear_hits:
            what = ", ".join(f"{n} ({type(modules[n]).__name__})" for n, _ in hits[:4])
            msg = f"pairs: pattern {pattern!r} matches no nn.Linear, only {what}"
            raise TypeError(msg)
        if n_fields > regex.groups:
            msg = (f"pairs[{pattern!r}]: template {template!r} uses {n_fields} field(s) but the "
                   f"pattern has {regex.groups} wildcard(s)")
            raise ValueError(msg)
        for first, mt in linear_hits:
            second = template.format(*mt.groups())
            if first in found and found[first] != second:
                msg = f"pairs: {first!r} is paired with both {found[first]!r} and {second!r}"
                raise ValueError(msg)
            _check_pair(modules, first, second, pattern)
            found[first] = second
    seconds = list(found.values())
    for name in set(seconds):
        if seconds.count(name) > 1 or name in found:
            msg = f"pairs: {name!r} is used by more than one pair"
            raise ValueError(msg)
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _check_pair(modules: dict, first: str, second: str, pattern: str) -> None:
    if second not in modules:
        msg = f"pairs[{pattern!r}]: {first!r} pairs with {second!r}, which is not a module of the model"
        raise ValueError(msg)
    m1, m2 = modules[first], modules[second]
    if not isinstance(m2, nn.Linear):
        msg = f"pairs[{pattern!r}]: second module {second!r} is a {type(m2).__name__}, not an nn.Linear"
        raise TypeError(msg)
    if m1.out_features != m2.in_features:
        msg = (f"pairs[{pattern!r}]: {first!r} has out_features {m1.out_features} but {second!r} "
               f"has in_features {m2.in_features}; not an FFN pair")
        raise ValueError(msg)


def ffn_pairs(model: nn.Module) -> dict[str, str]:
    """HF BERT-style FFN pairs of ``model``: each nn.Linear ``P.intermediate.dense`` with an
    nn.Linear sibling ``P.output.dense`` of matching size, as exact names (model order).
    Attention's ``P.attention.output.dense`` is not a sibling, so it is never picked."""
    check_model(model, "model")
    modules = dict(model.named_modules())
    suffix = "intermediate.dense"
    found = {}
    for name, m in modules.items():
        if name == suffix or name.endswith("." + suffix):
            second = name[:-len(suffix)] + "output.dense"
            m2 = modules.get(second)
            if (isinstance(m, nn.Linear) and isinstance(m2, nn.Linear)
                    and m.out_features == m2.in_features):
                found[name] = second
    return found


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _linear_like(old: nn.Linear, weight: torch.Tensor, bias: Any) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(old.training)
    new.weight.requires_grad_(old.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    return new


def prune_ffn(model: nn.Module, pairs: Any, calibration: Calibration, *, keep: Any = 0.5,
              ridge: float = 1e-6) -> PruneReport:
    """Prune the hidden units of FFN Linear pairs in place (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Modified in place: both Linears of each pair are replaced by smaller nn.Linear of the
        same dtype and device (float32 or float64; the fit runs in float64).
    pairs : mapping {first pattern: second template}
        See the module docstring; ``ffn_pairs(model)`` for BERT-style models.
    calibration : lpfast.torch.Calibration
        From ``calibrate(model, batches, rules=[second names...])`` in mode "gram": the
        second Linear of every pair needs its ``input_gram`` (h, h).
    keep : int in [1, h] or float in (0, 1]
        Hidden units kept per pair: a count (every pair's h must allow it) or a fraction.
    ridge : float >= 0
        Relative ridge of the refit (:func:`lpfast.prune_hidden_units`).

    Returns
    -------
    PruneReport
        Per pair the calibration errors and parameters; whole-model parameters before/after.

    Complexity per pair (h hidden, d output features, k kept): O(k³ + d · h²) for the fit.
    Nothing is replaced unless every pair validates and fits.

    Raises
    ------
    TypeError / ValueError
        Bad ``pairs`` (see :func:`resolve_pairs`), ``calibration`` not a Calibration, a
        pair's second Linear missing from it or recorded without a Gram (mode "scale") or
        with a Gram of the wrong size, bad ``keep`` / ``ridge``.
    """
    resolved = resolve_pairs(model, pairs)
    if not isinstance(calibration, Calibration):
        msg = (f"calibration: expected an lpfast.torch.Calibration (from calibrate(model, batches, "
               f"rules=[the second Linears])), got {type(calibration).__name__}")
        raise TypeError(msg)
    ridge = as_float(ridge, "ridge", low=0.0)
    modules = dict(model.named_modules())
    grams = {}
    for first, second in resolved.items():
        h = modules[second].in_features
        if second not in calibration:
            msg = (f"calibration: no statistics for {second!r} (second Linear of {first!r}); "
                   f"calibrate with rules including it")
            raise ValueError(msg)
        gram = calibration[second].input_gram
        if gram is None:
            msg = f"calibration: {second!r} was recorded in mode {calibration.mode!r}; prune_ffn needs mode 'gram'"
            raise ValueError(msg)
        if tuple(gram.shape) != (h, h):
            msg = (f"calibration: the Gram of {second!r} has shape {tuple(gram.shape)} but the layer "
                   f"has {h} inputs (calibrated on another model?)")
            raise ValueError(msg)
        hidden_keep_count(keep, h, "keep")
        grams[first] = gram.numpy()
    model_before = _n_params(model)
    report = PruneReport()
    replacements = []
    for first, second in resolved.items():
        t0 = time.perf_counter()
        m1, m2 = modules[first], modules[second]
        W2 = m2.weight.detach().cpu().to(torch.float64).numpy()
        r = prune_hidden_units(W2, grams[first], hidden_keep_count(keep, W2.shape[1], "keep"),
                               ridge=ridge)
        K = torch.from_numpy(r.keep).to(m1.weight.device)
        new1 = _linear_like(m1, m1.weight.detach()[K],
                            None if m1.bias is None else m1.bias.detach()[K])
        new2 = _linear_like(m2, torch.from_numpy(np.ascontiguousarray(r.W_out)),
                            None if m2.bias is None else m2.bias.detach())
        replacements += [(first, new1), (second, new2)]
        report.pairs.append(PairReport(
            first, second, W2.shape[1], len(r.keep), r.error_before, r.error_after, r.refit,
            _n_params(m1) + _n_params(m2), _n_params(new1) + _n_params(new2),
            time.perf_counter() - t0))
    for name, new in replacements:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    report.model_params_before, report.model_params_after = model_before, _n_params(model)
    return report
