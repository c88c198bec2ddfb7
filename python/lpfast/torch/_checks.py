"""Argument checks of the torch layers and ops: the one torch-side place, built on
:mod:`lpfast._validate` (numbers, shapes) with what only torch objects need (dtypes,
devices, modules, tensors).

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
value, shape or device) naming the argument, as the rest of lpfast does.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .._validate import RatioTooSmall, as_csr, as_int, as_ratio, doped_matmul_shapes

__all__ = [
    "FLOATS",
    "RatioTooSmall",
    "check_cpu_tensor",
    "check_doped_matmul",
    "check_embedding",
    "check_indices",
    "check_input",
    "check_lookup",
    "check_module",
    "check_state_csr",
    "check_state_indices",
    "compression_ratio",
    "embedding_shape",
    "float_dtype",
    "layer_dtype",
    "padding_index",
    "state_tensor",
]

#: The dtypes lpfast's kernels (and so its layers) compute in.
FLOATS = (torch.float32, torch.float64)


def float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """``dtype`` (default: torch's default dtype) if it is float32 or float64."""
    if dtype is None:
        dtype = torch.get_default_dtype()
    if dtype not in FLOATS:
        msg = f"{name}: expected torch.float32 or torch.float64, got {dtype}"
        raise TypeError(msg)
    return dtype


def layer_dtype(dtype: Any, device: Any) -> torch.dtype:
    """A new layer's ``dtype`` (:func:`float_dtype`) and ``device`` (None or CPU: lpfast's
    kernels are CPU kernels), checked; returns the dtype."""
    dtype = float_dtype(dtype)
    if device is not None and torch.device(device).type != "cpu":
        msg = f"device: lpfast layers run on CPU, got {device}"
        raise ValueError(msg)
    return dtype


def check_module(obj: Any, cls: type, name: str) -> None:
    """``obj`` is a ``cls`` whose own parameters are float32/float64 CPU tensors."""
    if not isinstance(obj, cls):
        msg = f"{name}: expected a torch.nn.{cls.__name__}, got {type(obj).__name__}"
        raise TypeError(msg)
    for pname, p in obj.named_parameters(recurse=False):
        if p.device.type != "cpu":
            msg = f"{name}: lpfast layers run on CPU, {pname} is on {p.device}"
            raise ValueError(msg)
        if p.dtype not in FLOATS:
            msg = f"{name}: expected float32 or float64 parameters, {pname} is {p.dtype}"
            raise TypeError(msg)


def check_embedding(emb: Any) -> None:
    """``emb`` is an ``nn.Embedding`` the compressed embeddings can replace."""
    check_module(emb, nn.Embedding, "emb")
    if emb.max_norm is not None or emb.sparse:
        msg = "emb: max_norm and sparse=True embeddings are not supported"
        raise ValueError(msg)


def check_cpu_tensor(name: str, t: Any) -> None:
    """``t`` is a CPU ``torch.Tensor``."""
    if not isinstance(t, Tensor):
        msg = f"{name}: expected a torch.Tensor, got {type(t).__name__}"
        raise TypeError(msg)
    if t.device.type != "cpu":
        msg = f"{name}: lpfast kernels run on CPU tensors, got device {t.device}"
        raise ValueError(msg)


def check_input(x: Any, features: int, dtype: torch.dtype) -> None:
    """A Linear-like layer's input: a CPU tensor of ``dtype`` and shape (..., features)."""
    if not isinstance(x, Tensor):
        msg = f"input: expected a torch.Tensor, got {type(x).__name__}"
        raise TypeError(msg)
    if x.dtype != dtype:
        msg = f"input: expected dtype {dtype} (the layer's), got {x.dtype}"
        raise TypeError(msg)
    if x.dim() == 0 or x.shape[-1] != features:
        msg = f"input: expected shape (..., {features}), got {tuple(x.shape)}"
        raise ValueError(msg)
    if x.device.type != "cpu":
        msg = f"input: lpfast layers run on CPU, got device {x.device}"
        raise ValueError(msg)


def check_indices(x: Any, name: str = "input") -> None:
    """An embedding's input: a tensor of int32/int64 indices (their range is checked where
    they are read, in C++ or by torch's own embedding)."""
    if not isinstance(x, Tensor):
        msg = f"{name}: expected a torch.Tensor of indices, got {type(x).__name__}"
        raise TypeError(msg)
    if x.dtype not in (torch.int32, torch.int64):
        msg = f"{name}: expected int32 or int64 indices, got {x.dtype}"
        raise TypeError(msg)


def embedding_shape(num_embeddings: Any, embedding_dim: Any, padding_idx: Any, *,
                    min_rows: int = 1) -> tuple[int, int, Optional[int]]:
    """An embedding layer's (n, d, padding_idx), checked as ``nn.Embedding`` checks them
    (padding_idx normalized to [0, n), see :func:`padding_index`)."""
    n = as_int(num_embeddings, "num_embeddings", low=min_rows)
    d = as_int(embedding_dim, "embedding_dim", low=1)
    return n, d, padding_index(padding_idx, n)


def padding_index(padding_idx: Any, n: int) -> Optional[int]:
    """``padding_idx`` as ``nn.Embedding`` takes it (in [-n, n)), normalized to [0, n)."""
    if padding_idx is None:
        return None
    idx = as_int(padding_idx, "padding_idx", low=-n, high=n - 1)
    return idx + n if idx < 0 else idx


#: A compression ratio, a finite number > 1: the NumPy API's check under the name the torch
#: modules import.
compression_ratio = as_ratio


# -- the custom ops' operands ----------------------------------------------------------------

def check_doped_matmul(x: Tensor, A: Tensor, B: Tensor, values: Optional[Tensor],
                       crow: Optional[Tensor], col: Optional[Tensor], bias: Optional[Tensor],
                       pattern: bool = True) -> None:
    """The operands of ``doped_kp_matmul`` (A, B already 3-d): CPU tensors of one float
    dtype, shapes as :func:`lpfast._validate.doped_matmul_shapes` checks them for the NumPy
    API too, S given whole; with ``pattern`` also S's CSR pattern (O(nnz), through
    :func:`lpfast._validate.as_csr`), else only its array shapes (traced tensors hold no
    data)."""
    tensors = {"x": x, "A": A, "B": B, "S_values": values, "bias": bias}
    for name, t in tensors.items():
        if t is None:
            continue
        check_cpu_tensor(name, t)
        if t.dtype != x.dtype or t.dtype not in FLOATS:
            msg = f"{name}: expected dtype {x.dtype} (float32 or float64, shared by all inputs), got {t.dtype}"
            raise TypeError(msg)
    m, n = doped_matmul_shapes(tuple(A.shape), tuple(B.shape), tuple(x.shape),
                               None if bias is None else tuple(bias.shape))
    given = [t is not None for t in (values, crow, col)]
    if any(given) and not all(given):
        msg = "S_values, S_crow_indices, S_col_indices: give all three or none"
        raise ValueError(msg)
    if all(given):
        if not all(isinstance(t, Tensor) for t in (crow, col)):
            msg = "S_crow_indices, S_col_indices: expected torch.Tensors"
            raise TypeError(msg)
        if crow.dtype != col.dtype or crow.dtype not in (torch.int32, torch.int64):
            msg = f"S_crow_indices, S_col_indices: expected one of int32/int64, got {crow.dtype} and {col.dtype}"
            raise TypeError(msg)
        if pattern:
            arrays = tuple(t.detach().contiguous().numpy() for t in (crow, col, values))
            as_csr(arrays, "S", (m, n), arrays[2].dtype, check_finite=False)
        elif crow.dim() != 1 or crow.shape[0] != m + 1 or col.shape != values.shape:
            msg = (f"S: expected crow_indices of shape ({m + 1},) and col_indices of the "
                   f"values' shape {tuple(values.shape)}")
            raise ValueError(msg)


def check_lookup(ids: Tensor, coef: Tensor, bases: Tensor, labels: Tensor,
                 padding_idx: Optional[int]) -> None:
    """The operands of ``projective_lookup``: CPU tensors, int ids, int64 labels, coef
    (n, j) and bases (k, j, d) of one float dtype, padding_idx in [0, n); O(1)."""
    for name, t in (("ids", ids), ("coef", coef), ("bases", bases), ("labels", labels)):
        check_cpu_tensor(name, t)
    check_indices(ids, "ids")
    if labels.dtype != torch.int64:
        msg = f"labels: expected int64, got {labels.dtype}"
        raise TypeError(msg)
    if coef.dtype not in FLOATS or bases.dtype != coef.dtype:
        msg = f"coef, bases: expected one dtype, float32 or float64, got {coef.dtype} and {bases.dtype}"
        raise TypeError(msg)
    if coef.dim() != 2 or bases.dim() != 3 or bases.shape[1] != coef.shape[1]:
        msg = f"coef, bases: expected (n, j) and (k, j, d), got {tuple(coef.shape)} and {tuple(bases.shape)}"
        raise ValueError(msg)
    if tuple(labels.shape) != (coef.shape[0],):
        msg = f"labels: expected shape ({coef.shape[0]},), got {tuple(labels.shape)}"
        raise ValueError(msg)
    if padding_idx is not None and not 0 <= int(padding_idx) < coef.shape[0]:
        msg = f"padding_idx: expected an index in [0, {coef.shape[0]}), got {padding_idx}"
        raise ValueError(msg)


# -- index buffers loaded from a state_dict --------------------------------------------------
#
# The layers' forwards pass index buffers to C++ kernels or torch's sparse CSR product with
# the checks off; a state_dict is untrusted input, so it is checked here, once, as it is
# loaded, and every error names the state_dict key.

def state_tensor(t: Any, key: str, kind: str) -> Tensor:
    """``t``, loaded as ``state_dict[key]``: a tensor of integers (``kind="index"``) or
    floats (``kind="float"``), else TypeError naming the key."""
    if not isinstance(t, Tensor):
        msg = f"state_dict[{key!r}]: expected a tensor, got {type(t).__name__}"
        raise TypeError(msg)
    if kind == "index" and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        msg = f"state_dict[{key!r}]: expected an integer tensor, got {t.dtype}"
        raise TypeError(msg)
    if kind == "float" and not t.is_floating_point():
        msg = f"state_dict[{key!r}]: expected a floating-point tensor, got {t.dtype}"
        raise TypeError(msg)
    return t


def check_state_indices(t: Tensor, key: str, high: int, *, length: Optional[int] = None,
                        increasing: bool = False) -> None:
    """An index tensor loaded as ``key``: 1-d (of ``length`` if given), values in
    [0, high), strictly increasing if asked; ValueError naming the key. O(len)."""
    if t.dim() != 1 or (length is not None and t.shape[0] != length):
        want = f"({length},)" if length is not None else "(N,)"
        msg = f"state_dict[{key!r}]: expected shape {want}, got {tuple(t.shape)}"
        raise ValueError(msg)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= high):
        msg = (f"state_dict[{key!r}]: values must lie in [0, {high}), got range "
               f"[{int(t.min())}, {int(t.max())}]")
        raise ValueError(msg)
    if increasing and t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        msg = f"state_dict[{key!r}]: must be strictly increasing"
        raise ValueError(msg)


def check_state_csr(module: nn.Module, state_dict: Any, prefix: str, shape: tuple[int, int],
                    *, sorted_columns: bool = False) -> None:
    """S of a sparse layer as ``load_state_dict`` is about to load it: ``S_values``,
    ``S_crow_indices``, ``S_col_indices``, each from ``state_dict`` where present, else the
    layer's own, and ``S_mask`` if the state_dict holds one.

    Checked: float values (and mask, of the values' length), int32 or int64 index tensors of
    one dtype, 1-d, crow of length rows + 1, the CSR invariants of
    :func:`lpfast._validate.as_csr` (crow from 0, non-decreasing, ending at nnz; columns in
    [0, cols)), with ``sorted_columns`` also columns strictly increasing within each row
    (torch's sparse CSR invariant). TypeError/ValueError naming the key. O(nnz).
    """
    def get(name: str, kind: str) -> Optional[Tensor]:
        if prefix + name in state_dict:
            return state_tensor(state_dict[prefix + name], prefix + name, kind)
        return getattr(module, name, None)

    values = get("S_values", "float")
    crow, col = get("S_crow_indices", "index"), get("S_col_indices", "index")
    kc, kv = prefix + "S_col_indices", prefix + "S_values"
    for key, t in ((prefix + "S_crow_indices", crow), (kc, col)):
        if t.dtype not in (torch.int32, torch.int64):
            msg = f"state_dict[{key!r}]: expected int32 or int64 indices, got {t.dtype}"
            raise TypeError(msg)
    if crow.dtype != col.dtype:
        msg = (f"state_dict[{prefix + 'S_crow_indices'!r}], state_dict[{kc!r}]: expected one "
               f"index dtype (int32 or int64), got {crow.dtype} and {col.dtype}")
        raise TypeError(msg)
    rows, cols = shape
    # crow: its length and no negative value here; its start, order and end below
    check_state_indices(crow, prefix + "S_crow_indices", 2**63 - 1, length=rows + 1)
    if values.dim() != 1:
        msg = f"state_dict[{kv!r}]: expected shape (nnz,), got {tuple(values.shape)}"
        raise ValueError(msg)
    check_state_indices(col, kc, cols, length=values.shape[0])
    if prefix + "S_mask" in state_dict:  # a layer without one in the state drops its own
        mask = get("S_mask", "float")
        if tuple(mask.shape) != tuple(values.shape):
            msg = (f"state_dict[{prefix + 'S_mask'!r}]: expected the shape of S_values "
                   f"{tuple(values.shape)}, got {tuple(mask.shape)}")
            raise ValueError(msg)
    # The CSR check proper (columns passed above): crow from 0, non-decreasing, ending at nnz.
    indptr, indices = crow.detach().numpy(), col.detach().numpy()
    as_csr((indptr, indices, np.zeros(indices.shape[0])),
           f"state_dict[{prefix + 'S_crow_indices'!r}]", shape, np.float64, check_finite=False)
    if sorted_columns and indices.shape[0] > 1:
        new_row = np.zeros(indices.shape[0], dtype=bool)
        starts = indptr[:-1][indptr[:-1] < indices.shape[0]]
        new_row[starts] = True
        bad = (np.diff(indices.astype(np.int64)) <= 0) & ~new_row[1:]
        if bad.any():
            k = int(np.argmax(bad)) + 1
            msg = (f"state_dict[{kc!r}]: columns must be strictly increasing within each row "
                   f"(torch's sparse CSR layout), position {k} is not")
            raise ValueError(msg)
