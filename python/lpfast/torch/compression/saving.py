"""Compressed models on disk without pickled code: :func:`save_compressed` writes the
model's ``state_dict`` and a plain description of the layers lpfast put in;
:func:`load_compressed` puts the same layers into a freshly built original model and loads
the state. The file is a ``torch.save`` of tensors, strings, numbers, lists and dicts only,
so it loads with ``torch.load(..., weights_only=True)``: reading it runs no code from it.

File layout (version 1)::

    {"format": "lpfast.compressed", "version": 1,
     "layers": {qualified name: {"class": "DopedKroneckerLinear", "config": {...}}, ...},
     "state_dict": model.state_dict()}

``config`` holds the layer's constructor arguments (dtype by name); sizes that follow the
fit (S's non-zeros, exact rows, ranks of row-doped layers) are adopted from the state_dict
as each layer loads it, after the index checks of its ``_load_from_state_dict``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from ..._files import load_failure
from ..layers.kron import DopedKroneckerLinear
from ..layers.lowrank import LowRankEmbedding, LowRankLinear
from ..layers.lowrank_sparse import LowRankSparseLinear
from ..layers.projective import ProjectiveEmbedding
from ..layers.row_doped import RowDopedEmbedding, RowDopedLinear

__all__ = ["load_compressed", "save_compressed"]

_FORMAT = "lpfast.compressed"
_VERSION = 1


def _dtype(m: nn.Module) -> str:
    return str(next(m.parameters()).dtype).removeprefix("torch.")


def _row_doped(m: nn.Module) -> dict[str, Any]:
    return {"rank": m.rank, "n_exact": m.n_exact, "method": m.method,
            "n_subspaces": m.n_subspaces if m.method == "projective" else None, "p": m.p}


#: class -> the constructor arguments (dtype aside) of a layer like ``m``.
_CONFIGS: dict[type, Callable[[nn.Module], dict[str, Any]]] = {
    LowRankSparseLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                    "rank": m.rank, "density": 0.0, "bias": m.bias is not None},
    DopedKroneckerLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                     "a_shape": list(m.a_shape), "b_shape": list(m.b_shape),
                                     "density": 0.0, "rank": m.rank, "bias": m.bias is not None,
                                     "cmr": m.cmr},
    LowRankLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                              "rank": m.rank, "bias": m.bias is not None},
    LowRankEmbedding: lambda m: {"num_embeddings": m.num_embeddings,
                                 "embedding_dim": m.embedding_dim, "rank": m.rank,
                                 "padding_idx": m.padding_idx},
    ProjectiveEmbedding: lambda m: {"num_embeddings": m.num_embeddings,
                                    "embedding_dim": m.embedding_dim,
                                    "n_subspaces": m.n_subspaces, "dim": m.dim,
                                    "padding_idx": m.padding_idx},
    RowDopedEmbedding: lambda m: {"num_embeddings": m.num_embeddings,
                                  "embedding_dim": m.embedding_dim, **_row_doped(m),
                                  "padding_idx": m.padding_idx},
    RowDopedLinear: lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                               **_row_doped(m), "bias": m.bias is not None},
    # Plain Linears are described too: prune_ffn changes their widths.
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None},
}
_CLASSES = {cls.__name__: cls for cls in _CONFIGS}


def _describe(m: nn.Module) -> dict[str, Any] | None:
    for cls, config in _CONFIGS.items():
        if type(m) is cls:
            return {"class": cls.__name__, "config": {**config(m), "dtype": _dtype(m)}}
    return None


def save_compressed(model: nn.Module, path: Any) -> None:
    """Write ``model`` (compressed by :func:`compress`, pruned by :func:`prune_ffn`, ...)
    to ``path`` as its state_dict plus a description of its lpfast layers and Linears.

    The file holds no pickled classes: ``torch.load(path, weights_only=True)`` reads it,
    and :func:`load_compressed` rebuilds the model from the original architecture.

    Parameters
    ----------
    model : nn.Module (CPU)
    path : str, os.PathLike or a binary file object
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    layers = {}
    for name, m in model.named_modules():
        desc = _describe(m) if name else None
        if desc is not None:
            layers[name] = desc
    torch.save({"format": _FORMAT, "version": _VERSION, "layers": layers,
                "state_dict": model.state_dict()}, _file(path))


def load_compressed(path: Any, model: nn.Module) -> nn.Module:
    """Read what :func:`save_compressed` wrote into ``model``, a freshly built instance of
    the original (uncompressed) architecture: each described layer replaces the module of
    that name (kept when it is already a plain Linear of that shape), then the state_dict
    loads (strict). No unpickling: the file loads with ``weights_only=True``.

    Parameters
    ----------
    path : str, os.PathLike or a binary file object
    model : nn.Module
        E.g. ``MyModel()`` or ``transformers.AutoModel.from_pretrained(name)``; changed in
        place.

    Returns
    -------
    ``model``, compressed, in the training mode it had.

    Raises
    ------
    ValueError
        ``path`` is not such a file (garbage, a pickled model, another format), names a
        module ``model`` does not have, or its state does not fit (the message names the
        key); OSError if it cannot be read.
    """
    if not isinstance(model, nn.Module):
        msg = f"model: expected a torch.nn.Module, got {type(model).__name__}"
        raise TypeError(msg)
    f = _file(path)
    path = f if isinstance(f, str) else getattr(f, "name", type(f).__name__)
    try:
        data = torch.load(f, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        msg = (f"{path}: not a compressed model saved by lpfast.torch.save_compressed "
               f"({load_failure(e)})")
        raise ValueError(msg) from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        msg = f"{path}: not a compressed model saved by lpfast.torch.save_compressed"
        raise ValueError(msg)
    if data.get("version") != _VERSION:
        msg = f"{path}: format version {data.get('version')!r}, this lpfast reads {_VERSION}"
        raise ValueError(msg)
    layers, state = data.get("layers"), data.get("state_dict")
    if not isinstance(layers, dict) or not isinstance(state, dict):
        msg = f"{path}: malformed (expected 'layers' and 'state_dict' mappings)"
        raise ValueError(msg)
    # Every layer is built before the first is put in, and a state that does not load puts
    # the original modules back (their values are load_state_dict's: those loaded before
    # the error keep the file's).
    swaps = [_replacement(model, name, desc, path) for name, desc in layers.items()]
    swaps = [s for s in swaps if s is not None]
    for parent, child, _, new in swaps:
        setattr(parent, child, new)
    try:
        model.load_state_dict(state)
    except Exception as e:
        for parent, child, old, _ in reversed(swaps):
            setattr(parent, child, old)
        if isinstance(e, RuntimeError):  # missing/unexpected keys, size mismatches
            msg = f"{path}: does not fit the model ({' '.join(str(e).split())[:500]})"
            raise ValueError(msg) from None
        raise
    return model


def _file(path: Any) -> Any:
    """A path as a str; a binary file object as it is (torch.save/torch.load take both)."""
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    if hasattr(path, "write") or hasattr(path, "read"):
        return path
    msg = f"path: expected a file path or a binary file object, got {type(path).__name__}"
    raise TypeError(msg)


def _replacement(model: nn.Module, name: str, desc: Any, path: str):
    """(parent, attribute, old module, new module) putting the layer ``desc`` describes at
    ``name``; None where the model already has that plain Linear."""
    where = f"{path}: layer {name!r}"
    if not isinstance(desc, dict) or desc.get("class") not in _CLASSES \
            or not isinstance(desc.get("config"), dict):
        msg = f"{where}: expected {{'class': one of {sorted(_CLASSES)}, 'config': {{...}}}}"
        raise ValueError(msg)
    config = dict(desc["config"])
    dtype = getattr(torch, str(config.pop("dtype", "")), None)
    if not isinstance(dtype, torch.dtype):
        msg = f"{where}: config has no valid dtype"
        raise ValueError(msg)
    parent_name, _, child = name.rpartition(".")
    try:
        old = model.get_submodule(name) if name else None
        parent = model.get_submodule(parent_name)
    except AttributeError:
        old = None
    if old is None:
        msg = f"{where}: the model has no module of that name"
        raise ValueError(msg)
    cls = _CLASSES[desc["class"]]
    if cls is nn.Linear and type(old) is nn.Linear and (old.in_features, old.out_features,
                                                        old.bias is not None) == (
            config.get("in_features"), config.get("out_features"), config.get("bias")):
        return None  # as built: keep its dtype and device
    try:
        new = cls(**config, dtype=dtype)
    except (TypeError, ValueError) as e:
        msg = f"{where}: cannot build {cls.__name__}: {e}"
        raise ValueError(msg) from None
    new.train(old.training)
    return parent, child, old, new
