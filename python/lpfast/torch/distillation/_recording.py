"""What :func:`lpfast.torch.distill` records before it trains (internal).

Which layers were compressed, a bounded deterministic sample of each original layer's input
rows, the original model's outputs, and the relative errors the report prints.
"""

from __future__ import annotations

import math

from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..calibration._running import Progress, eval_mode, first_input, removing, run_batch

#: Original layer types whose input rows distill knows how to flatten and replay.
LAYER_TYPES = (nn.Linear, nn.Embedding)


def default_output(out: Any) -> Tensor:
    """A model output as one tensor: itself, ``.last_hidden_state``, or the first floating
    tensor of a tuple/list/dict."""
    if isinstance(out, Tensor):
        return out
    hidden = getattr(out, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for v in values:
        if isinstance(v, Tensor) and v.is_floating_point():
            return v
    msg = (f"output_fn: the model returned {type(out).__name__}, which holds no floating tensor "
           f"to compare; pass output_fn=lambda out: <the tensor to match>")
    raise TypeError(msg)


def output_tensor(fn: Callable[[Any], Any], out: Any) -> Tensor:
    t = fn(out)
    if not isinstance(t, Tensor) or not t.is_floating_point():
        msg = f"output_fn: expected it to return a floating-point Tensor, got {type(t).__name__}"
        raise TypeError(msg)
    return t


def relative_mse(pred: Tensor, target: Tensor) -> tuple[float, float]:
    """(Σ (pred − target)², Σ target²) in float64: ratios are summed over batches first."""
    t = target.detach().double()
    return float(((pred.detach().double() - t) ** 2).sum()), float((t * t).sum())


def ratio(num: float, den: float) -> float:
    return num / den if den > 0 else num


def find_layers(compressed: nn.Module, original: nn.Module,
                layers: Optional[Any]) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, compressed layer, original layer) in model order.

    Found: every submodule of ``compressed`` whose type differs from the nn.Linear /
    nn.Embedding at the same name in ``original`` (the outermost, when both differ)."""
    orig = dict(original.named_modules())
    comp = dict(compressed.named_modules())
    if layers is not None:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names or not all(isinstance(n, str) for n in names):
            msg = f"layers: expected a list of module names, got {layers!r}"
            raise (ValueError if not names else TypeError)(msg)
        out = []
        for n in names:
            if n not in comp or n not in orig:
                where = "compressed" if n not in comp else "original"
                msg = f"layers: {n!r} is not a submodule of the {where} model"
                raise ValueError(msg)
            if not isinstance(orig[n], LAYER_TYPES):
                msg = f"layers: {n!r} is a {type(orig[n]).__name__} in the original model; expected nn.Linear or nn.Embedding"
                raise TypeError(msg)
            out.append((n, comp[n], orig[n]))
        order = {n: i for i, n in enumerate(comp)}
        return sorted(out, key=lambda t: order[t[0]])
    found = []
    for n, m in comp.items():
        if not n or n not in orig or type(orig[n]) is type(m) or not isinstance(orig[n], LAYER_TYPES):
            continue
        if any(n.startswith(f + ".") for f, _, _ in found):
            continue
        found.append((n, m, orig[n]))
    if not found:
        msg = ("compressed: no compressed layer found (no submodule whose type differs from the "
               "original's nn.Linear/nn.Embedding at the same name); run lpfast.torch.compress "
               "on a copy of the original first, or name the layers with layers=")
        raise ValueError(msg)
    return found


class Reservoir:
    """At most ``max_rows`` input rows of one layer, a uniform sample over everything seen:
    each row draws a key from the seeded generator and the rows with the smallest keys stay."""

    def __init__(self, max_rows: int, generator: torch.Generator):
        self.max_rows, self.g = max_rows, generator
        self.rows: Optional[Tensor] = None
        self.keys: Optional[Tensor] = None
        self.seen = 0

    def add(self, x: Tensor) -> None:
        keys = torch.rand(x.shape[0], generator=self.g, dtype=torch.float64)
        self.seen += x.shape[0]
        if self.rows is not None:
            x, keys = torch.cat([self.rows, x]), torch.cat([self.keys, keys])
        if x.shape[0] > self.max_rows:
            keep = torch.argsort(keys)[:self.max_rows]
            x, keys = x[keep], keys[keep]
        self.rows, self.keys = x.clone(), keys


def record(original: nn.Module, pairs: list[tuple[str, nn.Module, nn.Module]], items: list,
           output_fn: Callable[[Any], Any], max_rows: int, generator: torch.Generator,
           progress: bool) -> tuple[dict[str, Tensor], list[Tensor]]:
    """One pass of the original model (eval, no_grad): a sample of each paired layer's input
    rows and the model's outputs on every batch."""
    samples = {name: Reservoir(max_rows, generator) for name, _, _ in pairs}

    def hook_for(name: str, layer: nn.Module):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = first_input(args, kwargs)
            if isinstance(x, Tensor) and x.dim() > 0:
                rows = x.detach().reshape(-1) if isinstance(layer, nn.Embedding) \
                    else x.detach().reshape(-1, x.shape[-1])
                samples[name].add(rows)
        return hook

    outputs = []
    bar = Progress(progress, "distill: recording", len(items))
    try:
        with removing([]) as handles, eval_mode(original), torch.no_grad():
            for name, _, layer in pairs:
                handles.append(layer.register_forward_pre_hook(hook_for(name, layer), with_kwargs=True))
            for i, batch in enumerate(items):
                outputs.append(output_tensor(output_fn, run_batch(original, batch, i)).detach().clone())
                bar.update(1)
    finally:
        bar.close()
    unused = [name for name, s in samples.items() if s.rows is None]
    if unused:
        msg = f"layers: the original model's forward never called {', '.join(unused[:6])}; nothing to learn from"
        raise ValueError(msg)
    return {name: s.rows for name, s in samples.items()}, outputs


def summed_error(pairs: Iterable[tuple[Tensor, Tensor]], what: str) -> float:
    """Relative MSE over all (output, target) pairs of the batches, sums taken first; a shape
    mismatch names the batch and ``what`` gave the output."""
    num = den = 0.0
    for i, (out, target) in enumerate(pairs):
        if out.shape != target.shape:
            msg = (f"batches[{i}]: the compressed {what}'s output has shape {tuple(out.shape)}, "
                   f"the original's {tuple(target.shape)}")
            raise ValueError(msg)
        a, b = relative_mse(out, target)
        num, den = num + a, den + b
    return ratio(num, den)


def model_error(model: nn.Module, items: list, targets: list[Tensor],
                output_fn: Callable[[Any], Any]) -> float:
    """Relative MSE of ``model``'s outputs against ``targets`` over all batches (eval, no_grad)."""
    with eval_mode(model), torch.no_grad():
        return summed_error(((output_tensor(output_fn, run_batch(model, batch, i)), target)
                             for i, (batch, target) in enumerate(zip(items, targets))), "model")


def same_widths(layer: nn.Module, X: Tensor, Y: Tensor) -> bool:
    """Whether ``layer`` maps the original layer's inputs ``X`` to outputs shaped like ``Y``.

    Not so for layers whose width changed (FFN pairs pruned by :func:`prune_ffn`): they have
    no per-layer target, only the model's output."""
    if X.shape[0] == 0:
        return False
    with eval_mode(layer), torch.no_grad():
        try:
            return tuple(layer(X[:1]).shape) == tuple(Y[:1].shape)
        except RuntimeError:  # torch's shape errors, e.g. mat1 and mat2 cannot be multiplied
            return False


def layer_error(layer: nn.Module, X: Tensor, Y: Tensor, chunk: int = 4096) -> float:
    """Relative MSE of ``layer(X)`` against ``Y`` (eval, no_grad), in chunks of rows; NaN
    where the layer's widths differ from the original's (see :func:`same_widths`)."""
    if not same_widths(layer, X, Y):
        return math.nan
    with eval_mode(layer), torch.no_grad():
        return summed_error(((layer(X[s:s + chunk]), Y[s:s + chunk])
                             for s in range(0, X.shape[0], chunk)), "layer")
