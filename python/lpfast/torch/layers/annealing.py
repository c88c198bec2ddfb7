"""Sparsity annealing of doped layers (Doping, arXiv 2102.07071): S starts dense-ish and is
pruned down to its target density during training, keeping the largest entries.

* :class:`DensitySchedule`  the density at a training step (a gradual-pruning curve);
* :class:`SparsityAnnealer`  applies a schedule to every doped layer of a model through the
  layers' own ``prune_`` / ``compact_``.

A doped layer is any module with ``prune_(density) -> int`` (keep the largest-magnitude
entries of its sparse part(s), masking the rest, never regrowing) and ``compact_()`` (drop
the masked entries): ``DopedKroneckerLinear`` and ``DopedLSTM`` (which prunes each of its
gate matrices) are.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union

from torch import nn

from ..._validate import as_float, as_int

__all__ = ["DensitySchedule", "SparsityAnnealer"]


class DensitySchedule:
    """Density of the doping S at a training step: ``initial`` until ``start``, then down to
    ``target`` at ``end`` along ``target + (initial - target) * (1 - t)^power``, t the
    fraction of [start, end] done (Zhu & Gupta's gradual pruning curve, as used for the
    Doping paper's sparsity annealing; ``power=1`` is linear). Constant ``target`` after.

    Parameters
    ----------
    initial : float in (0, 1]
        Starting density ("dense-ish", e.g. 0.5 or 1.0).
    target : float in [0, initial]
    start, end : int, 0 <= start < end
        Steps (whatever the training loop counts: batches or epochs).
    power : float > 0
    """

    def __init__(self, initial: float, target: float, start: int, end: int,
                 power: float = 3.0):
        self.initial = as_float(initial, "initial", low=0.0, high=1.0)
        self.target = as_float(target, "target", low=0.0, high=self.initial)
        self.start = as_int(start, "start", low=0)
        self.end = as_int(end, "end", low=self.start + 1)
        self.power = as_float(power, "power", low=0.0)
        if not self.power > 0:
            msg = "power: expected power > 0"
            raise ValueError(msg)

    def __call__(self, step: int) -> float:
        t = min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.target + (self.initial - self.target) * (1.0 - t) ** self.power

    def __repr__(self) -> str:
        return (f"DensitySchedule(initial={self.initial}, target={self.target}, "
                f"start={self.start}, end={self.end}, power={self.power})")


def is_doped(module: Any) -> bool:
    """Whether ``module`` follows the doped-layer protocol (``prune_`` and ``compact_``)."""
    return (isinstance(module, nn.Module) and callable(getattr(module, "prune_", None))
            and callable(getattr(module, "compact_", None)))


def doped_layers(model: nn.Module) -> list[nn.Module]:
    """The outermost doped layers of ``model`` (itself included), each once, in module order:
    a doped layer made of doped layers (``DopedLSTM``'s gate matrices) prunes them itself."""
    found: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if is_doped(m):
            if all(m is not f for f in found):
                found.append(m)
            return
        for child in m.children():
            walk(child)

    walk(model)
    return found


class SparsityAnnealer:
    """Applies a :class:`DensitySchedule` to doped layers during training.

    Call :meth:`step` once per training step (after ``optimizer.step()``): every ``every``
    steps each layer is pruned to the schedule's density, keeping its largest-magnitude
    entries (:meth:`DopedKroneckerLinear.prune_`, :meth:`DopedLSTM.prune_`). :meth:`finalize`
    prunes to the target and compacts S (rebuild the optimizer afterwards if training goes
    on).

    Parameters
    ----------
    layers : nn.Module or iterable of doped layers
        A model (its outermost doped layers, :func:`doped_layers`) or the layers themselves:
        modules with ``prune_(density)`` and ``compact_()``, e.g. ``DopedKroneckerLinear``,
        ``DopedLSTM``.
    schedule : DensitySchedule or callable(step) -> density
    every : int >= 1
    """

    def __init__(self, layers: Union[nn.Module, Iterable[nn.Module]],
                 schedule: Callable[[int], float], every: int = 1):
        if isinstance(layers, nn.Module):
            found = doped_layers(layers)
        else:
            try:
                found = list(layers)
            except TypeError:  # not iterable: the message below names the argument
                found = []
        if not found or not all(is_doped(m) for m in found):
            msg = ("layers: expected a module holding doped layers (modules with prune_ and "
                   "compact_: DopedKroneckerLinear, DopedLSTM), or such layers")
            raise ValueError(msg)
        if not callable(schedule):
            msg = f"schedule: expected a DensitySchedule or callable(step), got {type(schedule).__name__}"
            raise TypeError(msg)
        self.layers, self.schedule = found, schedule
        self.every = as_int(every, "every", low=1)
        self.step_count = 0
        self.density = float(schedule(0))

    def step(self) -> float:
        """Advance one step; prune when due. Returns the density now in force."""
        self.step_count += 1
        if self.step_count % self.every == 0:
            self.density = float(self.schedule(self.step_count))
            for layer in self.layers:
                layer.prune_(self.density)
        return self.density

    def finalize(self) -> None:
        """Prune every layer to the final density and drop the pruned entries."""
        final = getattr(self.schedule, "target", None)
        for layer in self.layers:
            if final is not None:
                layer.prune_(final)
            layer.compact_()
