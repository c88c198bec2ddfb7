"""Sparsity annealing of doped layers (Doping, arXiv 2102.07071): S starts dense-ish and is
pruned down to its target density during training, keeping the largest entries.

* :class:`DensitySchedule`  the density at a training step (a gradual-pruning curve);
* :class:`SparsityAnnealer`  applies a schedule to every ``DopedKroneckerLinear`` of a model
  through the layers' own ``prune_`` / ``compact_``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Union

from torch import nn

from ..._validate import as_float, as_int
from .kron import DopedKroneckerLinear

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


class SparsityAnnealer:
    """Applies a :class:`DensitySchedule` to doped layers during training.

    Call :meth:`step` once per training step (after ``optimizer.step()``): every ``every``
    steps each layer is pruned to the schedule's density, keeping its largest-magnitude
    entries (:meth:`DopedKroneckerLinear.prune_`). :meth:`finalize` prunes to the target and
    compacts S (rebuild the optimizer afterwards if training goes on).

    Parameters
    ----------
    layers : nn.Module or iterable of DopedKroneckerLinear
        A model (all its DopedKroneckerLinear modules) or the layers themselves.
    schedule : DensitySchedule or callable(step) -> density
    every : int >= 1
    """

    def __init__(self, layers: Union[nn.Module, Iterable[DopedKroneckerLinear]],
                 schedule: Callable[[int], float], every: int = 1):
        if isinstance(layers, nn.Module):
            found = [m for m in layers.modules() if isinstance(m, DopedKroneckerLinear)]
        else:
            found = list(layers)
        if not found or not all(isinstance(m, DopedKroneckerLinear) for m in found):
            msg = "layers: expected a module holding DopedKroneckerLinear layers, or such layers"
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
