"""Calibration: streaming statistics of the inputs each nn.Linear of a model sees.

``calibrate(model, batches, rules)`` runs the model on a few batches with forward pre-hooks
and keeps, per matched Linear, sums over the input rows (no activation is stored): the Gram
``XᵀX`` (float64, ``in_features²`` numbers), the per-feature sum and sum of squares. The
data-aware fits minimize ``‖(W − Ŵ) Xᵀ‖_F² = tr((W − Ŵ) C (W − Ŵ)ᵀ)``, which needs C only.

Normalization: every statistic is a **mean over input rows** (``input_gram = XᵀX / n_rows``),
so statistics from 4 or 40 batches are on one scale and a fit's objective does not grow with
the calibration set. The raw sums are what is stored (``to_dict``), so nothing is lost.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..._files import load_failure
from ._running import (Progress, _HookError, batch_list, check_model, eval_mode, first_input,
                       known_length, match_linears, removing, run_batch)

__all__ = ["Calibration", "LayerStats", "calibrate"]

_MODES = ("gram", "scale")
#: Rows multiplied at once into the float64 Gram: bounds the float64 copy of an input
#: (8192 x 1536 x 8 bytes = 100 MB at the widest FFN input we target).
_CHUNK_ROWS = 8192
_FORMAT = "lpfast.calibration"


@dataclass
class LayerStats:
    """Input statistics of one Linear, summed over ``n_rows`` input rows (float64).

    Attributes
    ----------
    in_features : int
    n_rows : int
        Rows seen: the layer input flattened to (rows, in_features), over all batches and
        every call of the layer.
    sum, sq_sum : Tensor (in_features,), float64
        Σ x and Σ x² per feature.
    gram_sum : Tensor (in_features, in_features), float64, or None (mode "scale")
        Σ xᵀx = XᵀX.

    The means over rows are properties: :attr:`input_gram` (alias ``gram``),
    :attr:`scale` (alias ``input_scale``), :attr:`mean`; pass them to the data-aware fits
    as ``input_gram=`` / ``input_scale=``.
    """

    in_features: int
    n_rows: int
    sum: torch.Tensor
    sq_sum: torch.Tensor
    gram_sum: Optional[torch.Tensor] = None

    @property
    def input_gram(self) -> Optional[torch.Tensor]:
        """C = XᵀX / n_rows, (in, in) float64 (None in mode "scale"): the mean over rows of
        x xᵀ, the ``input_gram=`` of the data-aware fits."""
        return None if self.gram_sum is None else self.gram_sum / self.n_rows

    gram = input_gram

    @property
    def scale(self) -> torch.Tensor:
        """Mean of x² per feature, (in,) float64: the diagonal of :attr:`input_gram`."""
        return self.sq_sum / self.n_rows

    input_scale = scale  # the name the data-aware fits take it by (``input_scale=``)

    @property
    def mean(self) -> torch.Tensor:
        """Mean of x per feature, (in,) float64."""
        return self.sum / self.n_rows

    def _add(self, x: torch.Tensor) -> None:
        for start in range(0, x.shape[0], _CHUNK_ROWS):
            X = x[start:start + _CHUNK_ROWS].to(torch.float64)
            self.sum += X.sum(0)
            self.sq_sum += (X * X).sum(0)
            if self.gram_sum is not None:
                self.gram_sum += X.T @ X
        self.n_rows += x.shape[0]

    def to_dict(self) -> dict[str, Any]:
        d = {"in_features": self.in_features, "n_rows": self.n_rows, "sum": self.sum,
             "sq_sum": self.sq_sum}
        if self.gram_sum is not None:
            d["gram_sum"] = self.gram_sum
        return d


class Calibration(Mapping):
    """``name -> LayerStats`` of one :func:`calibrate` run, in model order.

    Attributes: ``mode`` ("gram" or "scale"), ``n_batches``, ``seconds``.
    Save with :meth:`save` (``.npz`` or a ``torch.save`` file), read back with :meth:`load`.
    """

    def __init__(self, layers: Mapping[str, LayerStats], mode: str, n_batches: int,
                 seconds: float = 0.0):
        self._layers = dict(layers)
        self.mode, self.n_batches, self.seconds = mode, int(n_batches), float(seconds)

    def __getitem__(self, name: str) -> LayerStats:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        rows = sum(s.n_rows for s in self._layers.values())
        return (f"Calibration(mode={self.mode!r}, layers={len(self)}, batches={self.n_batches}, "
                f"rows={rows}, seconds={self.seconds:.2f})")

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of tensors, ints and strings (``torch.save``-able, loads with
        ``weights_only=True``)."""
        return {"format": _FORMAT, "version": 1, "mode": self.mode, "n_batches": self.n_batches,
                "seconds": self.seconds,
                "layers": {n: s.to_dict() for n, s in self._layers.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        """The calibration :meth:`to_dict` described, checked (ValueError naming the part
        that is wrong: a calibration file is input like any other)."""
        if not isinstance(d, Mapping) or d.get("format") != _FORMAT:
            msg = "d: not an lpfast calibration (expected Calibration.to_dict()'s output)"
            raise ValueError(msg)
        try:
            if d["mode"] not in ("gram", "scale") or not isinstance(d["layers"], Mapping):
                raise ValueError("expected mode 'gram' or 'scale' and a 'layers' mapping")
            layers = {str(name): _layer_from_dict(s) for name, s in d["layers"].items()}
            return cls(layers, str(d["mode"]), int(d["n_batches"]), float(d.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            msg = f"d: malformed lpfast calibration ({type(e).__name__}: {e})"
            raise ValueError(msg) from None

    def save(self, path: Any) -> None:
        """Write to ``path``: NumPy ``.npz`` if it ends in ``.npz``, else ``torch.save``."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            torch.save(self.to_dict(), path)
            return
        d = self.to_dict()
        arrays = {}
        meta = {k: v for k, v in d.items() if k != "layers"}
        meta["layers"] = {}
        for i, (name, s) in enumerate(d["layers"].items()):
            meta["layers"][name] = {"index": i, "in_features": s["in_features"], "n_rows": s["n_rows"]}
            for key in ("sum", "sq_sum", "gram_sum"):
                if key in s:
                    arrays[f"{i}_{key}"] = s[key].numpy()
        np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Any) -> Calibration:
        """Read what :meth:`save` wrote, without unpickling (``torch.load(weights_only=True)``
        or ``np.load(allow_pickle=False)``).

        Raises
        ------
        OSError
            ``path`` cannot be opened.
        ValueError
            ``path`` is not a saved calibration (garbage, truncated, another file); the
            message names it.
        """
        path = os.fspath(path)
        try:
            return cls.from_dict(_read(path))
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - UnpicklingError, BadZipFile, EOFError, ...
            msg = f"{path}: not a saved lpfast calibration ({load_failure(e)})"
            raise ValueError(msg) from None


def _read(path: str) -> Any:
    """The dict a :meth:`Calibration.save` file holds (a .npz's arrays put back in place)."""
    if not path.endswith(".npz"):
        return torch.load(path, map_location="cpu", weights_only=True)
    with np.load(path, allow_pickle=False) as z:
        d = json.loads(str(z["__meta__"]))
        for s in d["layers"].values():
            i = s.pop("index")
            for key in ("sum", "sq_sum", "gram_sum"):
                if f"{i}_{key}" in z:
                    s[key] = torch.from_numpy(z[f"{i}_{key}"])
    return d


def _layer_from_dict(s: Mapping[str, Any]) -> LayerStats:
    """One layer's statistics of :meth:`LayerStats.to_dict`, shapes checked."""
    n = int(s["in_features"])
    rows = int(s["n_rows"])
    if n < 1 or rows < 0:
        raise ValueError(f"in_features {n} and n_rows {rows}: expected >= 1 and >= 0")
    gram = s.get("gram_sum")
    parts = [torch.as_tensor(s["sum"], dtype=torch.float64),
             torch.as_tensor(s["sq_sum"], dtype=torch.float64),
             None if gram is None else torch.as_tensor(gram, dtype=torch.float64)]
    for t, want in zip(parts, ((n,), (n,), (n, n))):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"statistics of shape {tuple(t.shape)}, expected {want}")
    return LayerStats(n, rows, *parts)


def calibrate(model: nn.Module, batches: Any, rules: Any = "*", *, mode: str = "gram",
              progress: bool = True, max_batches: Optional[int] = None,
              strict: bool = True) -> Calibration:
    """Input statistics of the matched nn.Linear modules of ``model`` over ``batches``.

    The model runs in eval mode under ``torch.no_grad()`` (each module's training flag is
    restored afterwards); forward pre-hooks on the matched Linears add each input, flattened
    to (rows, in_features) and cast to float64, into running sums. Hooks are removed on
    return and on error. Deterministic: the same batches give the same bits.

    Parameters
    ----------
    model : nn.Module (CPU; float32 or float64 Linears)
    batches : iterable
        Each item a Tensor (``model(x)``), a tuple/list (``model(*args)``) or a dict
        (``model(**kwargs)``, e.g. a tokenizer's output). Read once, lazily.
    rules : str, list of str, or a :func:`compress` rules mapping / list of pairs
        fnmatch patterns on qualified module names (a mapping's keys); default every Linear.
    mode : "gram" or "scale"
        "gram" keeps ``XᵀX`` (in² float64 per layer); "scale" only the per-feature sums and
        second moments (for very wide layers).
    progress : bool
        A batch counter on stderr (tqdm when installed).
    max_batches : int >= 1, optional
        Use only the first ``max_batches`` batches.
    strict : bool
        A pattern matching no nn.Linear is an error (default); False skips it (e.g. the
        Embedding rules of a compress mapping).

    Returns
    -------
    Calibration
        Mapping name -> :class:`LayerStats`; ``stats.input_gram`` is ``XᵀX / n_rows``
        (a mean over rows, see the module docstring), ``stats.scale`` its diagonal. A matched
        Linear the forward never called is left out with a warning.

    Complexity: O(rows · in²) flops and O(in²) memory per layer ("gram"); O(rows · in) and
    O(in) ("scale"); plus the model's own forward passes.

    Raises
    ------
    TypeError / ValueError
        A pattern matching no nn.Linear (the pattern and what it matched are named), an
        empty calibration set, NaN/Inf in a layer's input (layer and batch named), a bad
        ``mode``; a batch the model fails on re-raises the model's error with the batch's
        index (same exception type where possible).
    """
    check_model(model, "model")
    if mode not in _MODES:
        msg = f"mode: expected one of {_MODES}, got {mode!r}"
        raise ValueError(msg)
    items = batch_list(batches, max_batches)
    linears = match_linears(model, rules, strict)
    if not linears:
        msg = f"rules: {rules!r} matches no nn.Linear of the model"
        raise ValueError(msg)
    stats: dict[str, LayerStats] = {}
    for name, m in linears.items():
        d = m.in_features
        stats[name] = LayerStats(d, 0, torch.zeros(d, dtype=torch.float64),
                                 torch.zeros(d, dtype=torch.float64),
                                 torch.zeros(d, d, dtype=torch.float64) if mode == "gram" else None)
    batch_index = [0]

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = first_input(args, kwargs)
            if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != module.in_features:
                return  # the Linear itself raises its own error on this call
            x = x.detach().reshape(-1, module.in_features)
            if not torch.isfinite(x).all():
                msg = (f"batches[{batch_index[0]}]: the input of layer {name!r} contains NaN or "
                       f"Inf; calibration statistics would be meaningless")
                raise _HookError(ValueError(msg))
            stats[name]._add(x)
        return hook

    t0 = time.perf_counter()
    bar = Progress(progress, "calibrate", known_length(batches, max_batches))
    n = 0
    try:
        with removing([]) as handles, eval_mode(model), torch.no_grad():
            for name, m in linears.items():
                handles.append(m.register_forward_pre_hook(hook_for(name), with_kwargs=True))
            for i, batch in enumerate(items):
                batch_index[0] = i
                run_batch(model, batch, i)
                n += 1
                bar.update(1)
    finally:
        bar.close()
    if n == 0:
        msg = "batches: the calibration set is empty (no batch to run)"
        raise ValueError(msg)
    unused = [name for name, s in stats.items() if s.n_rows == 0]
    if len(unused) == len(stats):
        msg = f"rules: none of the matched Linears ({', '.join(unused[:4])}, ...) was called by the model's forward"
        raise ValueError(msg)
    if unused:
        warnings.warn(f"calibrate: {len(unused)} matched Linear(s) never called by the forward, "
                      f"left out: {', '.join(unused[:6])}", stacklevel=2)
    kept = {name: s for name, s in stats.items() if s.n_rows}
    return Calibration(kept, mode, n, time.perf_counter() - t0)
