"""What :func:`lpfast.torch.compress` reports: a :class:`LayerReport` per replaced module
and the model totals in a :class:`CompressionReport` (printable, JSON-ready), with the
measures they hold (parameters, index buffers, relative weight error).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

__all__ = ["CompressionReport", "LayerReport", "n_indices", "relative_error"]


@dataclass
class LayerReport:
    """One replaced module.

    Attributes
    ----------
    name : str           the module's qualified name in the model
    method : str         the rule's method (``"auto"`` for the planner)
    before, after : str  module reprs
    params_before, params_after : int
        ``sum(p.numel())`` over the old and the new module's parameters (integer buffers
        such as CSR indices, exact-row indices or labels not counted; see ``indices_after``).
    relative_error : float
        ``||W - W_new||_F / ||W||_F`` of the weight matrix (float64; biases are copied).
    seconds : float      fit time
    indices_after : int
        Numbers in the new module's integer buffers (exact-row indices, projective labels,
        CSR indices): stored, not trained.
    plan : lpfast.Plan or None
        The planner's result (method ``"auto"``): ranked table (``plan.rows``,
        ``str(plan)``) and the best fit.
    sweep : list of lpfast.Plan or None
        With the ``"auto"`` option ``sweep``: the plans at every ratio (``plan`` among
        them), by increasing ratio.
    """

    name: str
    method: str
    before: str
    after: str
    params_before: int
    params_after: int
    relative_error: float
    seconds: float
    indices_after: int = 0
    plan: Any = None
    sweep: Any = None

    @property
    def ratio(self) -> float:
        """``params_before / params_after``."""
        return self.params_before / max(self.params_after, 1)

    @property
    def stored_after(self) -> int:
        """Every number the new module stores: ``params_after + indices_after``."""
        return self.params_after + self.indices_after

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serializable); the plan as its rows, budget and ratio."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("plan", "sweep")}
        out.update(ratio=self.ratio, stored_after=self.stored_after,
                   plan=None if self.plan is None else self.plan.to_dict(),
                   sweep=None if self.sweep is None else [p.to_dict() for p in self.sweep])
        return out


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

    @property
    def indices_after(self) -> int:
        return sum(r.indices_after for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serializable)."""
        return {"layers": [r.to_dict() for r in self.layers],
                "params_before": self.params_before, "params_after": self.params_after,
                "indices_after": self.indices_after,
                "model_params_before": self.model_params_before,
                "model_params_after": self.model_params_after}

    def __str__(self) -> str:
        w = max([len(r.name) for r in self.layers] + [5])
        lines = [f"{'layer':<{w}}  {'method':<10} {'params':>10} -> {'after':>9} {'ratio':>6}  "
                 f"{'+index':>7}  {'rel.err':>8}  {'fit s':>6}"]
        for r in self.layers:
            lines.append(f"{r.name:<{w}}  {r.method:<10} {r.params_before:>10} -> "
                         f"{r.params_after:>9} {r.ratio:>5.2f}x  {r.indices_after:>7}  "
                         f"{r.relative_error:>8.4f}  {r.seconds:>6.2f}")
        total = self.model_params_before / max(self.model_params_after, 1)
        lines.append(f"model: {self.model_params_before} -> {self.model_params_after} parameters "
                     f"({total:.2f}x)")
        if self.indices_after:
            lines.append(f"(+index: integer buffers of the new layers, {self.indices_after} in all, "
                         f"not parameters)")
        for r in self.layers:
            if r.plan is not None:
                lines += ["", f"{r.name}: {r.plan}"]
        return "\n".join(lines)


def n_indices(module: nn.Module) -> int:
    """Numbers in the module's integer buffers (indices and labels: stored, not trained)."""
    return sum(b.numel() for b in module.buffers()
               if not (b.is_floating_point() or b.is_complex() or b.dtype == torch.bool))


def _weight(module: nn.Module) -> torch.Tensor:
    if hasattr(module, "dense_weight"):
        return module.dense_weight()
    return module.weight.detach()


def relative_error(old: nn.Module, new: nn.Module) -> float:
    """``||W - W_new||_F / ||W||_F`` in float64 (the absolute error when W is zero)."""
    W = old.weight.detach().double()
    diff = torch.linalg.norm(W - _weight(new).double())
    norm = torch.linalg.norm(W)
    return float(diff / norm) if norm > 0 else float(diff)
