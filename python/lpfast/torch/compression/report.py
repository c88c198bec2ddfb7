"""What :func:`lpfast.torch.compress` reports: a :class:`LayerReport` per replaced module
and the model totals in a :class:`CompressionReport` (printable, JSON-ready), with the
measures they hold (parameters, index buffers, relative weight error).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["CompressionReport", "LayerReport", "n_indices", "relative_error", "weight_of"]


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
    selection : Selection or None
        ``"auto"`` on an nn.Linear: every candidate fit with its parameters, output error
        and speed-up over the dense layer, the chosen one marked (``str(selection)`` is
        the table, ``selection.to_dict()`` the data).
    output_error : float or None
        For a Linear with calibration statistics: the relative output error on the
        calibration inputs, ``||(W - W_new) L||_F^2 / ||W L||_F^2`` with C = L Lᵀ the input
        Gram (note: squared, unlike ``relative_error``).
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
    selection: Any = None
    output_error: Optional[float] = None

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
               if f.name not in ("plan", "sweep", "selection")}
        out.update(ratio=self.ratio, stored_after=self.stored_after,
                   plan=None if self.plan is None else self.plan.to_dict(),
                   selection=None if self.selection is None else self.selection.to_dict(),
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
        calibrated = any(r.output_error is not None for r in self.layers)
        lines = [f"{'layer':<{w}}  {'method':<10} {'params':>10} -> {'after':>9} {'ratio':>6}  "
                 f"{'+index':>7}  {'rel.err':>8}  {'fit s':>6}"
                 + (f"  {'err_C':>8}" if calibrated else "")]
        for r in self.layers:
            err_c = "" if not calibrated else (f"  {r.output_error:>8.5f}"
                                               if r.output_error is not None else f"  {'-':>8}")
            lines.append(f"{r.name:<{w}}  {r.method:<10} {r.params_before:>10} -> "
                         f"{r.params_after:>9} {r.ratio:>5.2f}x  {r.indices_after:>7}  "
                         f"{r.relative_error:>8.4f}  {r.seconds:>6.2f}" + err_c)
        total = self.model_params_before / max(self.model_params_after, 1)
        lines.append(f"model: {self.model_params_before} -> {self.model_params_after} parameters "
                     f"({total:.2f}x)")
        if self.indices_after:
            lines.append(f"(+index: integer buffers of the new layers, {self.indices_after} in all, "
                         f"not parameters)")
        if calibrated:
            lines.append("(err_C: relative squared output error on the calibration inputs, "
                         "||(W - W_new) L||^2 / ||W L||^2 with C = L L^T)")
        for r in self.layers:
            if r.plan is not None:
                lines += ["", f"{r.name}: {r.plan}"]
            if r.selection is not None:
                lines += ["", f"{r.name}: {r.selection}"]
        return "\n".join(lines)


def n_indices(module: nn.Module) -> int:
    """Numbers in the module's integer buffers (indices and labels: stored, not trained)."""
    return sum(b.numel() for b in module.buffers()
               if not (b.is_floating_point() or b.is_complex() or b.dtype == torch.bool))


def weight_of(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight a layer applies, detached: ``dense_weight()`` of lpfast layers."""
    if hasattr(module, "dense_weight"):
        return module.dense_weight()
    return module.weight.detach()


def relative_error(old: nn.Module, new: nn.Module) -> float:
    """``||W - W_new||_F / ||W||_F`` in float64 (the absolute error when W is zero)."""
    W = old.weight.detach().double()
    diff = torch.linalg.norm(W - weight_of(new).double())
    norm = torch.linalg.norm(W)
    return float(diff / norm) if norm > 0 else float(diff)
