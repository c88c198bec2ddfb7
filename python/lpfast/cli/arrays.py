"""Matrices from files for the command line: .npy, .npz, .txt and torch files, by name."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class CliError(Exception):
    """A user error: printed as ``error: ...``, exit code 2."""


def tensor_to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)  # float16 / bfloat16: NumPy has no bfloat16
    return t.numpy()


def _load_torch(path: str, allow_pickle: bool) -> Any:
    try:
        import torch
    except ImportError as e:
        raise CliError(f"{path}: reading .pt files needs torch ({e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        hint = ("" if allow_pickle else "; if it is a whole pickled model you trust, pass "
                "--allow-pickle (unpickling runs code from the file)")
        raise CliError(f"{path}: cannot load ({type(e).__name__}: {str(e).splitlines()[0]}){hint}") from e


def _pick(obj: Any, key: str | None, path: str, ndim: int) -> np.ndarray:
    """The array named ``key`` in a loaded object (tensor, array, dict or nn.Module)."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):  # an nn.Module
        obj = obj.state_dict()
    if isinstance(obj, dict) or hasattr(obj, "files"):  # dict / state_dict / NpzFile
        names = list(obj.files) if hasattr(obj, "files") else [str(k) for k in obj]
        if key is None:
            fits = [k for k in names if getattr(obj[k], "ndim", None) == ndim]
            if len(fits) != 1:
                listed = ", ".join(fits[:12]) + (", ..." if len(fits) > 12 else "")
                raise CliError(f"{path}: holds {len(fits)} {ndim}-d arrays; name one as "
                                f"{path}:NAME (e.g. {listed or 'none found'})")
            key = fits[0]
        elif key not in names and key + ".weight" in names:
            key += ".weight"
        if key not in names:
            near = [k for k in names if key.split(".")[-1] in k][:8]
            raise CliError(f"{path}: no entry {key!r}" + (f" (similar: {', '.join(near)})" if near else ""))
        obj = obj[key]
    elif key is not None:
        raise CliError(f"{path}: holds a single array; drop ':{key}'")
    if hasattr(obj, "detach"):
        obj = tensor_to_numpy(obj)
    if not isinstance(obj, np.ndarray):
        raise CliError(f"{path}: expected an array or tensor, got {type(obj).__name__}")
    if obj.ndim != ndim:
        raise CliError(f"{path}{':' + key if key else ''}: expected a {ndim}-d array, got shape {obj.shape}")
    return obj


def load_array(spec: str, ndim: int = 2, allow_pickle: bool = False) -> np.ndarray:
    """An array from ``PATH`` or ``PATH:NAME``: ``.npy``, ``.npz``, ``.txt`` (vectors) or a
    torch file (``.pt``/``.pth``/``.bin``: a tensor, a state_dict or, with
    ``allow_pickle``, a whole model); ``NAME`` picks an entry (``.weight`` may be left out)."""
    path, key = spec, None
    if not os.path.isfile(spec) and ":" in spec:
        path, _, key = spec.rpartition(":")
        key = key or None
    if not os.path.isfile(path):
        raise CliError(f"{spec}: no such file")
    low = path.lower()
    if low.endswith(".npy"):
        obj: Any = np.load(path, allow_pickle=False)
    elif low.endswith(".npz"):
        obj = np.load(path, allow_pickle=False)
    elif low.endswith(".txt") and ndim == 1:
        obj = np.loadtxt(path, ndmin=1)
    elif low.endswith((".pt", ".pth", ".bin")):
        obj = _load_torch(path, allow_pickle)
    else:
        raise CliError(f"{path}: expected a .npy, .npz, .pt, .pth or .bin file"
                        + (" (or .txt)" if ndim == 1 else ""))
    return _pick(obj, key, path, ndim)
