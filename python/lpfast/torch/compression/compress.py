"""Compress a torch model: replace chosen nn.Linear / nn.Embedding modules by lpfast layers.

Rules map a module-name pattern to a method and its options::

    report = lpfast.torch.compress(model, {
        "bert.embeddings.word_embeddings": {"method": "lowrank", "ratio": 4, "p": 1.0},
        "*.layer.0.intermediate.dense": {"method": "doped_kron", "ratio": 4},
    })
    print(report)

Methods are looked up in a registry (:func:`register_method`): ``"lowrank"``,
``"lowrank_sparse"``, ``"projective"``, ``"doped_kron"`` and ``"auto"`` are built in.
``"auto"`` on an Embedding runs :func:`lpfast.plan_compression` on the layer (optionally
usage-weighted, e.g. by token counts) and builds the winner: a :class:`RowDopedEmbedding`
/ :class:`RowDopedLinear` when it stores exact rows, else the equivalent existing layer;
the plan's ranked table goes into the report. ``"auto"`` on a Linear fits low rank, low
rank + sparse and doped Kronecker at the rule's budget (``"auto:2"``) or at a few budgets
for a speed target (``"auto:speedup=1.3"``), measures each one's output error and its
latency against the dense layer, and keeps the best; the candidate table goes into the
report. With ``calibration=`` (:func:`lpfast.torch.calibrate`'s statistics) the Linear
fits are data-aware: they minimize the output error on the calibration inputs. Other methods plug in by registering a function
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

import fnmatch
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from . import _auto, _methods
from ._registry import METHODS, PROGRESS, STATS, TIMER, register_method
from ._rules import Rules, n_params, normalize_rules, parse_rule
from ._stats import InputStats, input_stats, output_error
from .report import CompressionReport, LayerReport, n_indices, relative_error, weight_of

__all__ = ["METHODS", "CompressionReport", "LayerReport", "compress", "parse_rule",
           "register_method"]

register_method("lowrank", _methods.lowrank)
register_method("lowrank_sparse", _methods.lowrank_sparse)
register_method("projective", _methods.projective)
register_method("doped_kron", _methods.doped_kron)
register_method("auto", _auto.auto)


def compress(model: nn.Module, rules: Rules, *, calibration: Any = None, strict: bool = True,
             progress: Optional[Callable[[str], Any]] = None,
             timer: Optional[Callable[..., Any]] = None) -> CompressionReport:
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
          2.0 = SVD); ``fit`` (kwargs of ``lpfast.lp_subspace``). A Linear with
          calibration statistics: the whitened SVD (``lpfast.lowrank_fit``; ``p``/``fit``
          not allowed, ``ridge`` 1e-6).
        * ``"lowrank_sparse"`` (Linear): ``W ≈ U V + S`` (:class:`LowRankSparseLinear`,
          ``lpfast.lowrank_sparse_fit``); ``ratio`` (``sparse_share`` 0.2 of the weight
          budget to S) or ``rank`` with ``density``; ``n_iter`` (3), ``ridge``.
        * ``"projective"`` (Embedding): ``ratio`` or ``dim``; ``n_subspaces`` (default 4),
          ``p`` (2.0), ``seed`` (0), ``n_init``, ``fit`` (kwargs of ``lpfast.k_subspaces``).
        * ``"doped_kron"`` (Linear): ``ratio`` or ``density``; ``a_shape``/``b_shape``
          (default: chosen by fit), ``rank`` (1), ``n_iter`` (3), ``cmr`` (0.0). With
          calibration statistics that fit is refit under the input Gram
          (``lpfast.doped_kp_fit_calibrated``; ``ridge``).
        * ``"auto"`` on an nn.Linear (no planner option given): a target, ``ratio``
          (``"auto:2"``) and/or ``speedup`` (``"auto:speedup=1.3"``: at least 1.3x
          faster than the dense layer). The ``candidates`` (default
          ``"lowrank/lowrank_sparse/doped_kron"``, the methods above, lowrank with p = 2)
          are fit at the ratio's budget, or for a speedup target at each of ``ratios``
          (default ``"2/4/8"``; with a ratio too, it and the larger ones); each gets its
          relative output error err_C = ||(W - W_new) L||^2 / ||W L||^2 (C = L L^T the
          calibration Gram; C = I without calibration) and its latency at ``rows`` (16)
          input rows on torch's current thread count, median of ``repeats`` (5) rounds
          interleaved with the dense layer. Chosen: the lowest error among those not
          slower than the dense layer (ratio target; none is: the lowest error) or at
          least ``speedup`` times faster (none is: the fastest). ``seed`` (0) draws the
          timed input; ``sparse_share`` and ``ridge`` go to the fits. The report row's
          ``selection`` holds every candidate (printed under the table). Fits are
          deterministic, latencies are measured: near-ties may go either way between runs.
        * ``"auto"`` (Embedding; a Linear given a planner option): ``ratio``;
          :func:`lpfast.plan_compression` ranks
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
    calibration : Calibration, mapping or path, optional
        Input statistics of the matched Linears: a :class:`lpfast.torch.Calibration`
        (or a file its ``save`` wrote), or a mapping name -> ``LayerStats``, input Gram
        (in, in) or per-feature second moments (in,) (float64 as calibrate records them).
        A Linear with statistics is fit data-aware by ``lowrank``, ``lowrank_sparse``,
        ``doped_kron`` and ``auto``, and its report row gets ``output_error``; one
        without is fit on the weights alone. O(in²) memory per layer.
    strict : bool
        A pattern matching no Linear/Embedding is an error (default), else ignored; so is
        a ``calibration`` entry of a Linear no rule matches.
    progress : callable(str), optional
        Called with a line before and after each layer (e.g. ``print``), and by
        ``"auto"`` with each planner candidate or Linear fit as it finishes.
    timer : callable(layers, x) -> sequence of float, optional
        How ``"auto"`` measures latency on a Linear: seconds per call of each layer on
        input ``x`` (rows, in), ``layers[0]`` the dense one. Default: the interleaved
        median timer. Give one to time another way (or to test choices with fixed figures).

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
        module (tied embeddings: untie first), an impossible ratio or target, calibration
        statistics for no matched Linear or of the wrong size; nothing is replaced then
        unless the error comes from a later layer's fit.
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    norm_rules = normalize_rules(rules)
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

    stats = input_stats(calibration, model, {n: m for n, m, _ in chosen}, strict)
    if timer is not None and not callable(timer):
        msg = f"timer: expected a callable(layers, x) -> seconds per call, got {type(timer).__name__}"
        raise TypeError(msg)
    report = CompressionReport(model_params_before=n_params(model))
    tokens = [(var, var.set(value)) for var, value in ((PROGRESS, progress), (STATS, stats),
                                                      (TIMER, timer))]
    try:
        _compress_layers(model, chosen, report, progress, stats)
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
    report.model_params_after = n_params(model)
    return report


def _show(value: Any) -> Any:
    """An option for a progress line: arrays and tensors by shape, not by content."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"<{type(value).__name__} {tuple(value.shape)}>"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)}>"
    return value


def _compress_layers(model: nn.Module, chosen: list[tuple[str, nn.Module, dict[str, Any]]],
                     report: CompressionReport, progress: Optional[Callable[[str], Any]],
                     stats: dict[str, InputStats]) -> None:
    for i, (name, module, spec) in enumerate(chosen):
        if progress is not None:
            opts = {k: _show(v) for k, v in spec.items() if k != "method"}
            data = " (calibrated)" if name in stats else ""
            progress(f"[{i + 1}/{len(chosen)}] {name}: {module} -> {spec['method']} {opts}{data}")
        t0 = time.perf_counter()
        new = METHODS[spec["method"]](name, module, spec)
        seconds = time.perf_counter() - t0
        if not isinstance(new, nn.Module):
            msg = f"rules[{name!r}]: method {spec['method']!r} returned {type(new).__name__}, not an nn.Module"
            raise TypeError(msg)
        new.train(module.training)
        plan = new.__dict__.pop("_lpfast_plan", None)
        sweep = new.__dict__.pop("_lpfast_sweep", None)
        selection = new.__dict__.pop("_lpfast_selection", None)
        err_c = None
        if name in stats:
            err_c = output_error(module.weight, weight_of(new), stats[name])
        row = LayerReport(name, spec["method"], repr(module), repr(new), n_params(module),
                          n_params(new), relative_error(module, new), seconds,
                          n_indices(new), plan, sweep, selection, err_c)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        report.layers.append(row)
        if progress is not None:
            idx = f" + {row.indices_after} indices" if row.indices_after else ""
            out = "" if err_c is None else f", err_C {err_c:.5f}"
            progress(f"      {row.params_before} -> {row.params_after} parameters{idx} "
                     f"({row.ratio:.2f}x), relative error {row.relative_error:.4f}{out}, "
                     f"{seconds:.2f} s")
