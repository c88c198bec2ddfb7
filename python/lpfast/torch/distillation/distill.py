"""Recovery: train compressed layers to reproduce the original model (knowledge distillation).

``distill(compressed, original, batches)`` after ``compress(compressed, rules)`` on a copy of
``original``. Three modes:

* ``"layer"`` (default, cheap): each compressed layer learns, alone, to map the inputs the
  ORIGINAL layer saw on the batches to the original layer's outputs (MSE). Original inputs
  are used for every layer, also past earlier compressed layers: one recording pass of the
  original model serves all layers, and each layer's target stays the one it replaces.
* ``"end_to_end"``: the parameters of all compressed layers train together (everything else
  frozen) so the compressed model's output matches the original's (MSE).
* ``"block"`` (``blocks="encoder.layer.*"``): block after block, the compressed layers inside
  a block learn to map the inputs the compressed model's (already distilled) earlier blocks
  give it to the original block's output (MSE). Trains layers whose widths changed (FFN
  pairs pruned by :func:`prune_ffn`), which have no per-layer target. See :mod:`._blocks`.

Doped Kronecker layers (:class:`DopedKroneckerLinear`) whose ``target_density`` (argument or
layer attribute) is below their density are pruned along a :class:`DensitySchedule` by a
:class:`SparsityAnnealer` while they train (the Doping paper's annealing of S), reaching the
target at 3/4 of the budget and compacted at the end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..._validate import as_float, as_int
from ._recording import (default_output, find_layers, layer_error, model_error, output_tensor,
                         record, same_widths)
from ._blocks import distill_blocks, find_blocks
from ..calibration._running import Progress, batch_list, check_model, eval_mode, run_batch
from ._training import Budget, adam, annealers_for, batch_losses, optimize, snapshot, train_only
from ..layers.kron import DopedKroneckerLinear

__all__ = ["DistillLayerReport", "DistillReport", "distill", "output_error"]

_MODES = ("layer", "end_to_end", "block")
_DEFAULT_STEPS = {"layer": 300, "end_to_end": 200, "block": 200}
#: Relative Adam rates (see _training.adam), tried on the MLP of tests/torch/test_torch_distill.py: the
#: layer-wise one brings a low-rank layer to its data-aware optimum within the default steps
#: (test_layerwise_reaches_the_whitened_optimum); end-to-end moves all layers together, so
#: it takes smaller steps.
_DEFAULT_LR = {"layer": 0.05, "end_to_end": 0.01, "block": 0.01}


@dataclass
class DistillLayerReport:
    """One layer: relative MSE ``Σ‖ŷ − y‖² / Σ‖y‖²`` of its output against the original
    layer's, on the recorded input rows, before and after; ``restored`` when training made
    it worse and the previous parameters were put back (never when annealing)."""

    name: str
    kind: str
    rows: int
    error_before: float
    error_after: float
    steps: int = 0
    seconds: float = 0.0
    density_before: Optional[float] = None
    density_after: Optional[float] = None
    restored: bool = False


@dataclass
class DistillReport:
    """What :func:`distill` did: per layer errors, the model output's relative MSE against
    the original's on the batches before and after, optimizer steps, seconds, and what
    stopped training (``"steps"`` or ``"time"``)."""

    mode: str
    layers: list[DistillLayerReport] = field(default_factory=list)
    output_error_before: float = math.nan
    output_error_after: float = math.nan
    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = "steps"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"distill ({self.mode}): {self.steps} steps, {self.seconds:.1f} s, stopped by "
                 f"{self.stopped_by}; model output relative MSE {self.output_error_before:.4g} -> "
                 f"{self.output_error_after:.4g}",
                 f"{'layer':<40} {'type':<22} {'rows':>6} {'before':>10} {'after':>10} {'steps':>6}"]
        for r in self.layers:
            note = " (kept previous)" if r.restored else ""
            if r.density_before is not None and r.density_after != r.density_before:
                note += f" density {r.density_before:.4f} -> {r.density_after:.4f}"
            lines.append(f"{r.name:<40} {r.kind:<22} {r.rows:>6} {r.error_before:>10.4g} "
                         f"{r.error_after:>10.4g} {r.steps:>6}{note}")
        return "\n".join(lines)


def _targets(target_density: Any, pairs: list) -> dict[str, float]:
    """Annealing target per doped layer below its current density."""
    out = {}
    for name, layer, _ in pairs:
        if not isinstance(layer, DopedKroneckerLinear):
            continue
        t = target_density.get(name) if isinstance(target_density, Mapping) else target_density
        if t is None:
            t = getattr(layer, "target_density", None)
        if t is not None:
            t = as_float(t, f"target_density[{name!r}]", low=0.0, high=1.0)
            if t < layer.density:
                out[name] = t
    return out


def _train_layer(name: str, layer: nn.Module, X: Tensor, Y: Tensor, *, steps: int,
                 seconds: Optional[float], lr: float, batch_rows: int, target: Optional[float],
                 g: torch.Generator, bar: Progress) -> tuple[int, str]:
    budget = Budget(steps, seconds)
    annealers = annealers_for([layer], [target], budget) if target is not None else []
    for p in layer.parameters():  # restored by distill with every other flag
        p.requires_grad_(True)
    opt = adam([layer], lr)
    scale = float((Y.double() ** 2).mean()) or 1.0  # a relative loss: the same lr fits any layer
    layer.train()

    def next_loss() -> Tensor:
        idx = torch.randint(X.shape[0], (min(batch_rows, X.shape[0]),), generator=g)
        return torch.nn.functional.mse_loss(layer(X[idx]), Y[idx]) / scale

    stopped = optimize(next_loss, opt, annealers, budget, bar, f"{name} ")
    layer.eval()
    return budget.step, stopped


def _check(compressed, original, mode, steps, time_budget, lr, seed, max_rows, batch_rows):
    check_model(compressed, "compressed")
    check_model(original, "original")
    if compressed is original:
        msg = "compressed: is the original model itself; compress a copy (copy.deepcopy) first"
        raise ValueError(msg)
    if mode not in _MODES:
        msg = f"mode: expected one of {_MODES}, got {mode!r}"
        raise ValueError(msg)
    if time_budget is not None:
        time_budget = as_float(time_budget, "time_budget", low=0.0)
    if steps is not None:
        steps = as_int(steps, "steps", low=0)
    elif time_budget is None:
        steps = _DEFAULT_STEPS[mode]
    else:  # only the time budget limits
        steps = sys.maxsize
    lr = _DEFAULT_LR[mode] if lr is None else as_float(lr, "lr", low=0.0)
    # torch.Generator.manual_seed's range, non-negative as lpfast's NumPy API wants seeds
    as_int(seed, "seed", low=0, high=2**64 - 1)
    return (steps, time_budget, lr, as_int(max_rows, "max_rows", low=1),
            as_int(batch_rows, "batch_rows", low=1))


def distill(compressed: nn.Module, original: nn.Module, batches: Any, *, mode: str = "layer",
            steps: Optional[int] = None, time_budget: Optional[float] = None,
            lr: Optional[float] = None, seed: int = 0, progress: bool = True,
            anneal: bool = True, target_density: Any = None, layers: Any = None,
            blocks: Any = None, output_fn: Optional[Callable[[Any], Any]] = None, max_rows: int = 4096,
            batch_rows: int = 256, max_batches: Optional[int] = None) -> DistillReport:
    """Train the compressed layers of ``compressed`` to reproduce ``original``, in place.

    Parameters
    ----------
    compressed : nn.Module
        A copy of ``original`` that :func:`compress` changed (or any model with the same
        module names). Left in eval mode, other parameters untouched.
    original : nn.Module
        The reference; not modified (its training flags are restored).
    batches : iterable of Tensor / tuple / dict
        Model inputs, as for :func:`calibrate`; read once and kept (end-to-end reuses them).
    mode : "layer", "end_to_end" or "block"
        "layer": each layer alone, on the inputs the ORIGINAL layer saw (one recording
        pass; exact when earlier layers are untouched, else the target each layer replaces).
        "end_to_end": all compressed layers together on the model's output. "block": block
        after block (``blocks=``), the compressed layers inside it on the block's output,
        fed what the compressed model's earlier blocks give it. See the module docstring.
        Layers whose widths changed (FFN pairs pruned by :func:`prune_ffn`) have no
        per-layer target: "block" or "end_to_end" only, the latter reporting their per-layer
        errors as NaN.
    steps : int >= 0, optional
        Adam steps per layer ("layer", default 300), per block ("block", default 200; one
        batch each) or in all ("end_to_end", default 200); with only ``time_budget`` given,
        no step limit.
    time_budget : float seconds, optional
        Training stops at whichever of ``steps`` and the time since the call began comes
        first ("layer" / "block": each layer / block gets an equal share of what is left). The final
        evaluation pass comes on top.
    lr : float, optional
        Relative Adam learning rate: each parameter tensor steps by ``lr * rms(tensor)``
        (one value suits layers of any scale), decayed to 0 along a cosine; default 0.05
        ("layer") or 0.01 ("end_to_end", "block").
    seed : int
        Seeds the row sample, the minibatch draws and (scoped, restored after) torch's
        global RNG (co-matrix dropout): the same seed gives the same parameters.
    progress : bool
        A step counter on stderr (tqdm when installed).
    anneal : bool
        Prune doped layers' S towards ``target_density`` while training (see above).
    target_density : float or mapping name -> float, optional
        Final density of S per doped layer (else the layer's ``target_density`` attribute,
        if any; none: S keeps its pattern and only its values train).
    layers : list of str, optional
        Names of the layers to train (default: every submodule whose type differs from the
        nn.Linear / nn.Embedding at the same name in ``original``; in "block" mode also one
        of the same type whose weight shape differs, as :func:`prune_ffn` leaves them).
    blocks : str or list of str, "block" mode only
        Names or fnmatch patterns of the blocks, e.g. ``"encoder.layer.*"``: submodules of
        both models, none inside another, trained in model order; each must hold a layer to
        train. A block's output is its first floating tensor output (B, T, d), matched in
        full (padded positions too). Report rows are blocks (``rows``: output rows B·T),
        their relative errors on the inputs the compressed model gave them when training.
    output_fn : callable(output) -> Tensor, optional
        The tensor to match; default the output itself, its ``.last_hidden_state``, or the
        first floating tensor of a tuple/dict.
    max_rows : int
        Input rows kept per layer: a uniform sample (by ``seed``) of all rows seen.
    batch_rows : int
        Rows per Adam step in "layer" mode.
    max_batches : int, optional
        Use only the first ``max_batches`` batches.

    Returns
    -------
    DistillReport
        Per layer relative output error on its recorded rows before/after, the model
        output's relative MSE on ``batches`` before/after, steps, seconds. "layer" mode
        keeps a layer's previous parameters when training made it worse (not when annealing).

    Complexity: one forward pass of each model over ``batches`` to record and two to
    evaluate, plus ``steps`` layer (or model) forward/backward passes per layer ("layer":
    ``batch_rows`` rows each; "end_to_end": one batch each). "block": per block i, a pass
    of each model over ``batches`` stopped at the block (cost up to block i), ``steps``
    forward/backward passes of the block alone on one batch each and two of it to evaluate;
    memory: that block's inputs (args and kwargs) and original outputs on every batch.
    Memory: ``max_rows`` input rows per layer and the original's outputs on every batch.

    Raises
    ------
    TypeError / ValueError
        Models that are not nn.Modules or are the same object, no compressed layer found,
        an empty batch list, a layer name missing from either model, bad budgets, ``blocks``
        without mode "block" (or the reverse), naming no module, nesting, or holding no
        compressed layer, ``layers`` outside the blocks; a batch
        the model fails on re-raises its error naming the batch.
    """
    steps, time_budget, lr, max_rows, batch_rows = _check(
        compressed, original, mode, steps, time_budget, lr, seed, max_rows, batch_rows)
    if (mode == "block") != (blocks is not None):
        msg = ("blocks: required with mode='block' (e.g. blocks='encoder.layer.*')" if blocks is None
               else f"blocks: only for mode='block', got mode={mode!r}")
        raise ValueError(msg)
    t0 = time.perf_counter()
    output_fn = default_output if output_fn is None else output_fn
    if not callable(output_fn):
        msg = f"output_fn: expected a callable, got {type(output_fn).__name__}"
        raise TypeError(msg)
    items = list(batch_list(batches, max_batches))
    if not items:
        msg = "batches: empty (distillation needs input batches)"
        raise ValueError(msg)
    if mode == "block":
        found = find_blocks(compressed, original, blocks, layers)
        pairs = [(n, m, None) for _, _, mine in found for n, m in mine]
    else:
        pairs = find_layers(compressed, original, layers)
    targets = _targets(target_density, pairs) if anneal else {}
    g = torch.Generator().manual_seed(int(seed))
    report = DistillReport(mode)
    flags = [(p, p.requires_grad) for m in (compressed, original) for p in m.parameters()]
    try:
        with torch.random.fork_rng(devices=[]), eval_mode(original):
            torch.manual_seed(int(seed))
            for p in original.parameters():
                p.requires_grad_(False)
            rows, outputs = record(original, [] if mode == "block" else pairs, items, output_fn,
                                   max_rows, g, progress)
            report.output_error_before = model_error(compressed, items, outputs, output_fn)
            kw = dict(steps=steps, deadline=time_budget, t0=t0, lr=lr, g=g, progress=progress)
            if mode == "block":
                distill_blocks(compressed, original, found, items, report, DistillLayerReport,
                               targets, **kw)
            else:
                _per_layer(compressed, pairs, rows, items, outputs, output_fn, report, targets,
                           mode=mode, batch_rows=batch_rows, **kw)
            compressed.eval()
            report.output_error_after = model_error(compressed, items, outputs, output_fn)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        compressed.eval()
    report.seconds = time.perf_counter() - t0
    return report


def _per_layer(compressed, pairs, rows, items, outputs, output_fn, report, targets, *, mode,
               batch_rows, **kw) -> None:
    """Modes "layer" and "end_to_end": one report row per layer, on its recorded rows."""
    with torch.no_grad():
        ys = {name: orig(rows[name]).detach() for name, _, orig in pairs}
    for name, layer, _ in pairs:
        report.layers.append(DistillLayerReport(
            name, type(layer).__name__, rows[name].shape[0],
            layer_error(layer, rows[name], ys[name]), math.nan,
            density_before=getattr(layer, "density", None)
            if isinstance(layer, DopedKroneckerLinear) else None))
    if mode == "layer":
        reshaped = [n for n, layer, _ in pairs if not same_widths(layer, rows[n], ys[n])]
        if reshaped:
            msg = (f"layers {reshaped}: their input/output widths differ from the original "
                   "layers' (e.g. pruned FFN pairs), so they have no per-layer target; use "
                   "mode='block' or mode='end_to_end'")
            raise ValueError(msg)
        _layerwise(pairs, rows, ys, report, targets, batch_rows=batch_rows, **kw)
    else:
        _end_to_end(compressed, pairs, items, outputs, output_fn, report, targets, **kw)
    for r, (name, layer, _) in zip(report.layers, pairs):
        r.error_after = layer_error(layer, rows[name], ys[name])
        if isinstance(layer, DopedKroneckerLinear):
            r.density_after = layer.density


def _layerwise(pairs, rows, ys, report, targets, *, steps, deadline, t0, lr, batch_rows, g,
               progress) -> None:
    bar = Progress(progress, "distill (layer)", steps * len(pairs) if deadline is None else None)
    try:
        for k, ((name, layer, _), r) in enumerate(zip(pairs, report.layers)):
            seconds = None
            if deadline is not None:  # an equal share of what is left: early stops roll over
                seconds = max(deadline - (time.perf_counter() - t0), 0.0) / (len(pairs) - k)
            before = snapshot([layer])[0]
            start = time.perf_counter()
            r.steps, why = _train_layer(name, layer, rows[name], ys[name], steps=steps,
                                        seconds=seconds, lr=lr, batch_rows=batch_rows,
                                        target=targets.get(name), g=g, bar=bar)
            r.seconds = time.perf_counter() - start
            report.steps += r.steps
            if why == "time":
                report.stopped_by = "time"
            # NaN-safe: a diverged layer is restored too
            if name not in targets and not layer_error(layer, rows[name], ys[name]) <= r.error_before:
                layer.load_state_dict(before)
                r.restored = True
    finally:
        bar.close()


def _end_to_end(compressed, pairs, items, outputs, output_fn, report, targets, *, steps,
                deadline, t0, lr, g, progress) -> None:
    mods = [layer for _, layer, _ in pairs]
    for p in compressed.parameters():
        p.requires_grad_(False)
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(True)
    seconds = None if deadline is None else max(deadline - (time.perf_counter() - t0), 0.0)
    budget = Budget(steps, seconds)
    doped = [(layer, targets[name]) for name, layer, _ in pairs if name in targets]
    annealers = annealers_for([m for m, _ in doped], [t for _, t in doped], budget)
    opt = adam(mods, lr)
    before = snapshot(mods)
    start = time.perf_counter()
    train_only(compressed, mods)
    next_loss = batch_losses(
        lambda i: output_tensor(output_fn, run_batch(compressed, items[i], i)), outputs, g)
    bar = Progress(progress, "distill (end_to_end)", steps if deadline is None else None)
    try:
        stopped = optimize(next_loss, opt, annealers, budget, bar, "")
    finally:
        bar.close()
    compressed.eval()
    report.steps, report.stopped_by = budget.step, stopped
    for r in report.layers:
        r.steps, r.seconds = budget.step, time.perf_counter() - start
    if not targets and not model_error(compressed, items, outputs, output_fn) <= report.output_error_before:
        for m, state in zip(mods, before):
            m.load_state_dict(state)
        for r in report.layers:
            r.restored = True


def output_error(compressed: nn.Module, original: nn.Module, batches: Any, *,
                 output_fn: Optional[Callable[[Any], Any]] = None,
                 max_batches: Optional[int] = None) -> float:
    """Relative MSE ``Σ‖ŷ − y‖² / Σ‖y‖²`` of ``compressed``'s outputs against ``original``'s
    over ``batches`` (both in eval mode under no_grad; training flags restored), e.g. on
    held-out batches after :func:`distill`. ``output_fn`` as in :func:`distill`.

    Complexity: one forward pass of each model per batch."""
    check_model(compressed, "compressed")
    check_model(original, "original")
    fn = default_output if output_fn is None else output_fn
    items = list(batch_list(batches, max_batches))
    if not items:
        msg = "batches: empty"
        raise ValueError(msg)
    with eval_mode(original), torch.no_grad():
        targets = [output_tensor(fn, run_batch(original, b, i)) for i, b in enumerate(items)]
    return model_error(compressed, items, targets, fn)
