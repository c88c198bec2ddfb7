"""Projective clustering of an embedding table (arXiv 2010.04290): each row on one of k
j-dimensional subspaces (``lpfast.k_subspaces``), n*j + k*j*d stored values, looked up by
one fused C++ kernel (``ops.projective_lookup``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ... import k_subspaces
from ..._validate import as_int
from .._checks import (check_embedding, check_indices, check_state_indices, embedding_shape,
                       layer_dtype, state_tensor)
from ..ops import projective_lookup

__all__ = ["ProjectiveEmbedding"]


class ProjectiveEmbedding(nn.Module):
    """Embedding whose rows each lie on one of k j-dimensional subspaces.

    Row i of the (n, d) table is ``coef[i] @ bases[labels[i]]``. Stored: ``coef`` (n, j) and
    ``bases`` (k, j, d) as parameters (exactly ``n*j + k*j*d`` values, not a stitched
    (n, k*j) matrix) and ``labels`` (n,) as an int64 buffer.

    Parameters
    ----------
    num_embeddings, embedding_dim : int (n, d)
    n_subspaces : int k >= 1
    dim : int j >= 1
    padding_idx : int, optional (that row gets no gradient)
    dtype : torch.float32 or torch.float64

    The forward is one fused C++ lookup (``lpfast.torch.ops.projective_lookup``): each id's
    coefficients times its subspace's basis, ``N*j*d`` multiply-adds for N indices, like an
    ``nn.Embedding(n, j)`` followed by ``nn.Linear(j, d)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, n_subspaces: int, dim: int,
                 padding_idx: Optional[int] = None, *, dtype: Optional[torch.dtype] = None,
                 device: Any = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = embedding_shape(
            num_embeddings, embedding_dim, padding_idx)
        self.n_subspaces = as_int(n_subspaces, "n_subspaces", low=1)
        self.dim = as_int(dim, "dim", low=1)
        dtype = layer_dtype(dtype, device)
        n, d, k, j = self.num_embeddings, self.embedding_dim, self.n_subspaces, self.dim
        self.coef = nn.Parameter(torch.randn(n, j, dtype=dtype))
        bases = torch.empty(k, d, j, dtype=dtype)
        for c in range(k):
            nn.init.orthogonal_(bases[c])
        self.bases = nn.Parameter(bases.transpose(1, 2).contiguous())
        self.register_buffer("labels", torch.randint(0, k, (n,), dtype=torch.int64))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        """Indices (...) -> (..., embedding_dim)."""
        check_indices(x)
        # One fused C++ pass (ids bounds-checked there: IndexError), gradients in C++ too.
        return projective_lookup(x, self.coef, self.bases, self.labels, self.padding_idx,
                                 check=False)

    def dense_weight(self) -> Tensor:
        """The (n, d) table, detached."""
        with torch.no_grad():
            return torch.bmm(self.coef.unsqueeze(1), self.bases[self.labels]).squeeze(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Labels index the bases in C++: checked once as they are loaded (a float or
        # out-of-range label would otherwise be cast or found only at lookup time).
        if prefix + "labels" in state_dict:
            labels = state_tensor(state_dict[prefix + "labels"], prefix + "labels", "index")
            bases = state_dict.get(prefix + "bases", self.bases)
            whole = isinstance(bases, Tensor) and bases.dim() == 3  # else torch refuses it
            k = int(bases.shape[0]) if whole else self.n_subspaces
            check_state_indices(labels, prefix + "labels", k, length=self.num_embeddings)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, n_subspaces={self.n_subspaces}, "
                f"dim={self.dim}" + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}"))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, n_subspaces: int, dim: int, p: float = 2.0,
                       **fit: Any) -> ProjectiveEmbedding:
        """Projective clustering of ``emb.weight``'s rows with ``lpfast.k_subspaces``.

        Parameters
        ----------
        emb : torch.nn.Embedding, float32/float64, CPU (no max_norm, not sparse)
        n_subspaces : int k, dim : int j
            As ``lpfast.k_subspaces`` (1 <= j < d, k*j <= n).
        p : float >= 1
        **fit
            Passed to ``lpfast.k_subspaces`` (``seed``, ``n_init``, ``max_iter`` …).

        Returns
        -------
        ProjectiveEmbedding with labels, coefficients ``V_c^T x`` and bases ``V_c^T``, and
        ``fit_info`` (the ``KSubspaces`` result).
        """
        check_embedding(emb)
        res = k_subspaces(emb.weight.detach().numpy(), n_subspaces, dim, p, **fit)
        k, d, j = res.bases.shape
        layer = cls(emb.num_embeddings, emb.embedding_dim, k, j, emb.padding_idx,
                    dtype=emb.weight.dtype)
        with torch.no_grad():
            layer.coef.copy_(torch.from_numpy(res.coefficients()))
            layer.bases.copy_(torch.from_numpy(np.ascontiguousarray(res.bases.transpose(0, 2, 1))))
            layer.labels.copy_(torch.from_numpy(np.asarray(res.labels, dtype=np.int64)))
        layer.fit_info = res
        return layer
