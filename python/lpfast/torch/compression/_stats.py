"""Calibration statistics as :func:`lpfast.torch.compress` takes them (internal): the
``calibration=`` argument checked against the layers the rules matched, one
:class:`InputStats` per Linear, and the lookups the methods make while the call runs.

A layer's statistics are its input Gram C = XᵀX / n (or the per-feature second moments
only, C = diag(s)); the data-aware fits minimize err_C(Ŵ) = ‖(W − Ŵ) L‖_F², C = L Lᵀ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ... import calibration_error
from ..._gram import as_gram
from ._registry import STATS
from ..calibration.calibrate import Calibration, LayerStats

__all__ = ["InputStats", "input_stats", "output_error", "stats_of"]


@dataclass(frozen=True)
class InputStats:
    """One Linear's input statistics, float64 NumPy: ``gram`` (in, in) or ``scale`` (in,)."""

    gram: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None

    @property
    def kind(self) -> str:
        """``"gram"`` (full C) or ``"scale"`` (C = diag(s))."""
        return "gram" if self.gram is not None else "scale"

    def kwargs(self) -> dict[str, np.ndarray]:
        """``input_gram=`` or ``input_scale=`` of the data-aware fits."""
        return {"input_gram": self.gram} if self.gram is not None else {"input_scale": self.scale}


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    return value


def _one(name: str, value: Any, module: nn.Linear) -> InputStats:
    where = f"calibration[{name!r}]"
    if isinstance(value, LayerStats):
        if value.in_features != module.in_features or value.n_rows < 1:
            msg = (f"{where}: statistics of {value.in_features} features over {value.n_rows} "
                   f"rows; the layer takes {module.in_features} features (and needs rows)")
            raise ValueError(msg)
        gram, scale = value.input_gram, (value.scale if value.input_gram is None else None)
    else:
        arr = _numpy(value)
        ndim = getattr(arr, "ndim", None)
        if ndim not in (1, 2):
            msg = (f"{where}: expected LayerStats, an input Gram (in, in) or second moments "
                   f"(in,) as a tensor or array, got {type(value).__name__}"
                   f"{'' if ndim is None else f' with {ndim} dimensions'}")
            raise TypeError(msg)
        gram, scale = (arr, None) if ndim == 2 else (None, arr)
    try:
        g = as_gram(_numpy(gram), _numpy(scale), module.in_features)
    except (TypeError, ValueError) as e:  # the check names input_gram/input_scale: add the layer
        raise type(e)(f"{where}: {e}") from e
    return InputStats(gram=g.full) if g.full is not None else InputStats(scale=g.diag)


def input_stats(calibration: Any, model: nn.Module, matched: Mapping[str, nn.Module],
                strict: bool) -> dict[str, InputStats]:
    """``calibration`` (None, a :class:`Calibration` or its file path, or a mapping
    name -> LayerStats / Gram (in, in) / second moments (in,)) checked against the
    modules the rules matched.

    Raises ValueError naming the entry: a name that is no nn.Linear of the model, a Linear
    no rule matched (with ``strict``; ignored otherwise), statistics of the wrong size,
    NaN/Inf, an asymmetric Gram or negative second moments. Cost: O(in²) per layer.
    """
    if calibration is None:
        return {}
    if isinstance(calibration, (str, os.PathLike)):
        calibration = Calibration.load(calibration)
    if not isinstance(calibration, Mapping):
        msg = (f"calibration: expected a Calibration (lpfast.torch.calibrate), a mapping "
               f"name -> input Gram, or a file path, got {type(calibration).__name__}")
        raise TypeError(msg)
    modules = dict(model.named_modules())
    out = {}
    for name, value in calibration.items():
        module = modules.get(name) if isinstance(name, str) else None
        if not isinstance(module, nn.Linear):
            what = "no module" if module is None else f"a {type(module).__name__}"
            msg = (f"calibration[{name!r}]: the model has {what} of that name; calibration "
                   f"statistics belong to nn.Linear layers")
            raise ValueError(msg)
        if name not in matched:
            if strict:
                msg = (f"calibration[{name!r}]: no rule matches this layer, so nothing uses its "
                       f"statistics; calibrate with the same rules (calibrate(model, batches, "
                       f"rules)) or pass strict=False")
                raise ValueError(msg)
            continue
        out[name] = _one(name, value, module)
    return out


def stats_of(name: str) -> Optional[InputStats]:
    """The running compress call's statistics of layer ``name`` (None: weights only)."""
    return STATS.get().get(name)


def output_error(W: torch.Tensor, W_new: torch.Tensor, stats: Optional[InputStats]) -> float:
    """Relative err_C = ‖(W − Ŵ) L‖_F² / ‖W L‖_F² (float64); ``stats`` None: C = I, the
    squared relative Frobenius error. O(out · in²) with a full Gram, O(out · in) otherwise."""
    kw = {} if stats is None else stats.kwargs()
    return calibration_error(W.detach().double().numpy(), W_new.detach().double().numpy(),
                             **kw, relative=True)
