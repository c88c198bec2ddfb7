"""Matrices from files for the command line: .npy, .npz, .txt and torch files, by name."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .._files import load_failure


class CliError(Exception):
    """A user error: printed as ``error: ...``, exit code 2."""


def tensor_to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)  # float16 / bfloat16: NumPy has no bfloat16
    return t.numpy()


def _check_npy_size(f: Any, size: int, where: str) -> None:
    """The array an .npy stream's header declares fits in the ``size`` bytes of the stream:
    a header may claim terabytes that NumPy would try to allocate before reading."""
    from numpy.lib import format as npy

    version = npy.read_magic(f)
    reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = reader(f)
    if dtype.hasobject:
        raise CliError(f"{where}: holds Python objects (pickled data), which are not loaded")
    need = math.prod(shape) * dtype.itemsize
    if need > size - f.tell():
        raise CliError(f"{where}: header declares a {shape} {dtype} array ({need} bytes) but "
                       f"the file holds {size - f.tell()} bytes of data (truncated or corrupt)")


def _check_npz_sizes(path: str) -> None:
    """:func:`_check_npy_size` of every member of an .npz archive."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.filename.endswith(".npy"):
                with z.open(info) as f:
                    _check_npy_size(f, info.file_size, f"{path}:{info.filename[:-4]}")


def load_torch(path: str, allow_pickle: bool) -> Any:
    """``torch.load`` of ``path`` on the CPU: ``weights_only`` (tensors and plain data, no
    code runs) unless ``allow_pickle``; every failure a one-line CliError naming the file."""
    try:
        import torch
    except ImportError as e:
        raise CliError(f"{path}: reading .pt files needs torch ({e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        if not allow_pickle and "GLOBAL" in str(e):
            raise CliError(f"{path}: holds pickled Python objects ({load_failure(e)}), not "
                           f"only tensors; unpickling runs code from the file: if it is a "
                           f"whole model you trust, pass --allow-pickle") from e
        raise CliError(f"{path}: cannot load ({load_failure(e)})") from e


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
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, expected a file")
    if not os.path.isfile(path):
        raise CliError(f"{spec}: no such file")
    low = path.lower()
    try:
        if low.endswith(".npy"):
            with open(path, "rb") as f:
                _check_npy_size(f, os.path.getsize(path), path)
            return _pick(np.load(path, allow_pickle=False), key, path, ndim)
        if low.endswith(".npz"):
            _check_npz_sizes(path)
            with np.load(path, allow_pickle=False) as z:  # lazy: members are read by name
                return _pick(z, key, path, ndim)
        if low.endswith(".txt") and ndim == 1:
            obj: Any = np.loadtxt(path, ndmin=1)
        elif low.endswith((".pt", ".pth", ".bin")):
            obj = load_torch(path, allow_pickle)
        else:
            raise CliError(f"{path}: expected a .npy, .npz, .pt, .pth or .bin file"
                           + (" (or .txt)" if ndim == 1 else ""))
    except CliError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/garbage: ValueError, EOFError, BadZipFile...
        raise CliError(f"{path}: cannot read ({load_failure(e)})") from e
    return _pick(obj, key, path, ndim)
