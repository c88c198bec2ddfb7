"""Sequential per-block distillation: :func:`lpfast.torch.distill` in mode ``"block"`` (internal).

For each block in model order (e.g. each transformer layer ``encoder.layer.{i}``), the
compressed model's block gets the inputs its own earlier blocks (already distilled) produce
and learns to reproduce the ORIGINAL block's output on the original's inputs (relative MSE
on the block's first tensor output). Only the compressed or pruned layers inside the block
train. The target is the block's output, not a layer's, so layers whose widths changed (FFN
pairs pruned by :func:`prune_ffn`) train too, which mode ``"layer"`` cannot do.
"""

from __future__ import annotations

import fnmatch
import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from ._recording import LAYER_TYPES, default_output, find_layers, output_tensor, summed_error
from ..calibration._running import Progress, eval_mode, removing, run_batch
from ._training import Budget, adam, annealers_for, batch_losses, optimize, snapshot, train_only


class _Captured(BaseException):
    """Raised by a capture hook once it has what it needs: the rest of the forward pass is
    skipped. A BaseException so that run_batch's ``except Exception`` re-wrapping (and any
    model code catching Exception) lets it through."""


def _is_changed(comp: nn.Module, orig: nn.Module) -> bool:
    """A compressed layer (another type) or a pruned one (same type, other weight shape)."""
    if type(comp) is not type(orig):
        return True
    w, w0 = getattr(comp, "weight", None), getattr(orig, "weight", None)
    return isinstance(w, Tensor) and isinstance(w0, Tensor) and w.shape != w0.shape


def find_blocks(compressed: nn.Module, original: nn.Module, blocks: Any,
                layers: Any) -> list[tuple[str, nn.Module, list[tuple[str, nn.Module]]]]:
    """(block name, compressed block, [(layer name, layer) to train]) in model order.

    ``blocks``: names or fnmatch patterns (``"encoder.layer.*"``) of submodules of both
    models; a pattern names its outermost matches. ``layers``: the names to train (validated by find_layers); default every
    outermost submodule inside the block that differs from the original's nn.Linear /
    nn.Embedding at the same name in type or weight shape."""
    names = [blocks] if isinstance(blocks, str) else blocks
    if names is None or not isinstance(names, (list, tuple)) or not names \
            or not all(isinstance(n, str) for n in names):
        msg = f"blocks: expected a module name, a pattern or a list of them, got {blocks!r}"
        raise (TypeError if names and not isinstance(names, (list, tuple)) else ValueError)(msg)
    comp, orig = dict(compressed.named_modules()), dict(original.named_modules())
    order = {n: i for i, n in enumerate(comp)}
    found: list[str] = []
    for pattern in names:
        hits = [n for n in comp if n and fnmatch.fnmatchcase(n, pattern)]
        # fnmatch's * crosses dots: "encoder.layer.*" also names every submodule of a
        # layer; the outermost matches are the blocks
        hits = [n for n in hits if not any(n.startswith(h + ".") for h in hits)]
        if not hits:
            msg = (f"blocks: {pattern!r} names no submodule of the compressed model "
                   f"(e.g. {', '.join(n for n in list(comp)[1:6])})")
            raise ValueError(msg)
        missing = [n for n in hits if n not in orig]
        if missing:
            msg = f"blocks: {missing[0]!r} is not a submodule of the original model"
            raise ValueError(msg)
        found += [n for n in hits if n not in found]
    found.sort(key=order.__getitem__)
    for a in found:
        inner = [b for b in found if b.startswith(a + ".")]
        if inner:
            msg = f"blocks: {inner[0]!r} lies inside {a!r}; blocks must not nest"
            raise ValueError(msg)
    if layers is not None:
        chosen = [(n, m) for n, m, _ in find_layers(compressed, original, layers)]
        outside = [n for n, _ in chosen if not any(n.startswith(b + ".") for b in found)]
        if outside:
            msg = f"layers: {outside[0]!r} lies in none of the blocks {found[:4]}"
            raise ValueError(msg)
    else:
        chosen = []
        for n, m in comp.items():
            if n in orig and isinstance(orig[n], LAYER_TYPES) and _is_changed(m, orig[n]) \
                    and not any(n.startswith(c + ".") for c, _ in chosen):
                chosen.append((n, m))
    out = []
    for b in found:
        mine = [(n, m) for n, m in chosen if n.startswith(b + ".")]
        if not any(p.numel() for _, m in mine for p in m.parameters()):
            msg = (f"blocks: {b!r} holds no compressed or pruned layer with parameters to train "
                   f"(a layer differing from the original's in type or weight shape, or named "
                   f"with layers=)")
            raise ValueError(msg)
        out.append((b, comp[b], mine))
    return out


def _detached(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, tuple):
        return tuple(_detached(v) for v in x)
    if isinstance(x, list):
        return [_detached(v) for v in x]
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def capture(model: nn.Module, block: nn.Module, items: list, what: str) -> list:
    """Per batch, ``block``'s forward inputs ``(args, kwargs)`` (``what="inputs"``) or its
    output tensor (``"output"``) when ``model`` runs it (eval, no_grad); the pass stops there."""
    got: list = []

    def pre_hook(module, args, kwargs):
        got.append((_detached(args), _detached(kwargs)))
        raise _Captured

    def hook(module, args, kwargs, out):
        got.append(output_tensor(default_output, out).detach())
        raise _Captured

    with removing([]) as handles, eval_mode(model), torch.no_grad():
        handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True) if what == "inputs"
                       else block.register_forward_hook(hook, with_kwargs=True))
        for i, batch in enumerate(items):
            n = len(got)
            try:
                run_batch(model, batch, i)
            except _Captured:
                pass
            if len(got) != n + 1:
                msg = f"blocks: the model's forward did not call the block on batches[{i}]"
                raise ValueError(msg)
    return got


def _run(block: nn.Module, inputs: tuple) -> Tensor:
    args, kwargs = inputs
    return output_tensor(default_output, block(*args, **kwargs))


def block_error(block: nn.Module, inputs: list, targets: list[Tensor]) -> float:
    """Relative MSE of the block's output on ``inputs`` against ``targets`` (eval, no_grad)."""
    with eval_mode(block), torch.no_grad():
        return summed_error(((_run(block, x), y) for x, y in zip(inputs, targets)), "block")


def _train_block(block, mods, inputs, ys, annealers, budget, lr, g, bar, label) -> str:
    for m in mods:  # every other flag was cleared by distill_blocks and is restored by distill
        for p in m.parameters():
            p.requires_grad_(True)
    opt = adam(mods, lr)
    train_only(block, mods)
    next_loss = batch_losses(lambda i: _run(block, inputs[i]), ys, g)
    try:
        return optimize(next_loss, opt, annealers, budget, bar, label)
    finally:
        block.eval()
        for m in mods:
            for p in m.parameters():
                p.requires_grad_(False)


def distill_blocks(compressed: nn.Module, original: nn.Module, found: list, items: list,
                   report: Any, layer_report: type, targets: dict, *, steps: int,
                   deadline: Any, t0: float, lr: float, g: torch.Generator,
                   progress: bool) -> None:
    """Train block after block (see the module docstring); one report row per block.

    Per block: a pass of each model over ``items`` up to the block (stopped there), its
    ``steps`` Adam steps on one cached batch each, and two evaluations of the block alone.
    A block whose error rose (and that anneals nothing) gets its previous parameters back."""
    for p in compressed.parameters():
        p.requires_grad_(False)
    total = steps * len(found) if deadline is None else None
    bar = Progress(progress, "distill (block)", total)
    try:
        for k, (name, block, mine) in enumerate(found):
            start = time.perf_counter()
            ys = capture(original, original.get_submodule(name), items, "output")
            xs = capture(compressed, block, items, "inputs")
            seconds = None
            if deadline is not None:  # an equal share of what is left: early stops roll over
                seconds = max(deadline - (time.perf_counter() - t0), 0.0) / (len(found) - k)
            budget = Budget(steps, seconds)  # after the captures: its clock drives the lr decay
            mods = [m for _, m in mine]
            r = layer_report(name, type(block).__name__, sum(y.numel() // y.shape[-1] for y in ys),
                             block_error(block, xs, ys), math.nan)
            report.layers.append(r)
            doped = [(m, targets[n]) for n, m in mine if n in targets]
            annealers = annealers_for([m for m, _ in doped], [t for _, t in doped], budget)
            before = snapshot(mods)
            why = _train_block(block, mods, xs, ys, annealers, budget, lr, g, bar, f"{name} ")
            r.error_after = block_error(block, xs, ys)
            if not doped and not r.error_after <= r.error_before:  # NaN-safe: divergence too
                for m, state in zip(mods, before):
                    m.load_state_dict(state)
                r.error_after, r.restored = r.error_before, True
            r.steps, r.seconds = budget.step, time.perf_counter() - start
            report.steps += r.steps
            if why == "time":
                report.stopped_by = "time"
    finally:
        bar.close()
