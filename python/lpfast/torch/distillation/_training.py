"""The training loop :func:`lpfast.torch.distill` runs (internal): a step/time budget, Adam
with relative step sizes and a cosine decay, and the Doping annealing of S driven by the
budget.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..calibration._running import Progress
from ..layers.annealing import DensitySchedule, SparsityAnnealer
from ..layers.kron import DopedKroneckerLinear

#: Annealing reaches the target density at this fraction of the budget; the rest recovers.
_ANNEAL_END = 0.75


class Budget:
    """Progress through a step and time budget: fraction done is the larger of the two."""

    def __init__(self, steps: int, seconds: Optional[float]):
        self.steps, self.seconds = steps, seconds
        self.t0, self.step = time.perf_counter(), 0

    def fraction(self) -> float:
        f = self.step / self.steps if self.steps else 1.0
        if self.seconds is not None:
            f = max(f, (time.perf_counter() - self.t0) / self.seconds if self.seconds > 0 else 1.0)
        return min(f, 1.0)

    def done(self) -> Optional[str]:
        if self.step >= self.steps:
            return "steps"
        if self.seconds is not None and time.perf_counter() - self.t0 >= self.seconds:
            return "time"
        return None


class AnnealSchedule:
    """A :class:`DensitySchedule` driven by the budget's fraction (so a time budget anneals
    too); ``target`` lets :meth:`SparsityAnnealer.finalize` prune to it."""

    _RESOLUTION = 1000

    def __init__(self, budget: Budget, initial: float, target: float):
        self.budget, self.target = budget, target
        self.curve = DensitySchedule(initial, target, 0, self._RESOLUTION)

    def __call__(self, step: int) -> float:
        t = min(self.budget.fraction() / _ANNEAL_END, 1.0)
        return self.curve(int(round(t * self._RESOLUTION)))


def annealers_for(layers: list[DopedKroneckerLinear], targets: list[float], budget: Budget) -> list:
    return [SparsityAnnealer([m], AnnealSchedule(budget, m.density, t))
            for m, t in zip(layers, targets)]


def snapshot(modules: list[nn.Module]) -> list[dict[str, Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def adam(modules: list[nn.Module], lr: float) -> torch.optim.Adam:
    """Adam with one group per parameter tensor, its step ``lr * rms(tensor)``: Adam moves
    each entry by about its learning rate whatever the gradient's scale, so a relative rate
    suits pretrained weights of any magnitude (an all-zero tensor takes its module's rms)."""
    groups, seen = [], set()
    for m in modules:
        params = [p for p in m.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        if not params:
            continue
        flat = torch.cat([p.detach().reshape(-1).double() for p in params])
        fallback = float(flat.square().mean().sqrt()) or 1.0
        for p in params:
            rms = float(p.detach().double().square().mean().sqrt()) if p.numel() else 0.0
            groups.append({"params": [p], "lr": lr * (rms or fallback), "base_lr": lr * (rms or fallback)})
    return torch.optim.Adam(groups)


def set_lr(opt: torch.optim.Optimizer, budget: Budget) -> None:
    """Cosine decay to 0 over the budget: the last steps refine instead of oscillating."""
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * 0.5 * (1.0 + math.cos(math.pi * budget.fraction()))


def optimize(next_loss: Callable[[], Tensor], opt: torch.optim.Optimizer, annealers: list,
              budget: Budget, bar: Progress, label: str) -> str:
    """Adam steps on ``next_loss()`` until the budget runs out (returns what stopped it); the
    annealers prune after every step and finalize (prune to target, compact) at the end."""
    stopped = budget.done()
    while stopped is None:
        set_lr(opt, budget)
        loss = next_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for a in annealers:
            a.step()
        budget.step += 1
        bar.update(1, f"{label}loss {loss.item():.3g}")
        stopped = budget.done()
    for a in annealers:
        a.finalize()
    return stopped


def train_only(model: nn.Module, modules: list[nn.Module]) -> None:
    """``modules`` in training mode (co-matrix dropout of doped layers applies), the rest of
    ``model`` in eval mode: no dropout noise against targets recorded in eval mode."""
    model.eval()
    for m in modules:
        m.train()


def batch_losses(run: Callable[[int], Tensor], targets: list[Tensor],
                 g: torch.Generator) -> Callable[[], Tensor]:
    """``next_loss`` for :func:`optimize`: the MSE of ``run(i)`` against ``targets[i]`` over
    the target's mean square (a relative loss: one lr fits any scale), ``i`` drawn in fresh
    shuffled passes over the batches from the seeded ``g``."""
    scales = [float((t.double() ** 2).mean()) or 1.0 for t in targets]
    order: list[int] = []

    def next_loss() -> Tensor:
        if not order:
            order.extend(torch.randperm(len(targets), generator=g).tolist())
        i = order.pop()
        return torch.nn.functional.mse_loss(run(i), targets[i]) / scales[i]

    return next_loss
