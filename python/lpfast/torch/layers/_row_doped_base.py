"""What the two row-doped layers share (internal): storage of a factorization plus exact
rows in ``RowDoped.to_dict()``'s layout, sizes derived from the tensors, the evaluation of
factor rows, conversion to and from :class:`lpfast.RowDoped`, and the state_dict loading that
adopts the stored sizes after checking them. See ``row_doped.py`` for the layout.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import RowDoped, row_doped_fit
from ..._validate import as_float, as_int
from .._checks import check_state_indices, compression_ratio, layer_dtype, state_tensor
from ..ops import projective_lookup

__all__ = ["RowDopedBase", "fit_budget"]

_METHODS = ("svd", "lp", "projective")
_LOWRANK = ("exact_indices", "exact_rows", "U", "Vt")
_PROJECTIVE = ("exact_indices", "exact_rows", "labels", "coefficients", "bases")
_INDEX_NAMES = ("exact_indices", "labels")


def _to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class RowDopedBase(nn.Module):
    """Shared storage, checks and state handling of the two row-doped layers."""

    def _init_storage(self, n: int, d: int, rank: Any, n_exact: Any, method: Any,
                      n_subspaces: Any, p: Any, dtype: Any, device: Any) -> None:
        if not isinstance(method, str) or method not in _METHODS:
            msg = f"method: expected one of {_METHODS}, got {method!r}"
            raise ValueError(msg)
        self.method = method
        self.p = as_float(2.0 if p is None else p, "p", low=1.0)
        if method == "svd" and self.p != 2.0:
            msg = f"p: method 'svd' is the p = 2 fit, got p={self.p}"
            raise ValueError(msg)
        dtype = layer_dtype(dtype, device)
        self._table_shape = (n, d)
        R = as_int(n_exact, "n_exact", low=0, high=n - 1)
        m = n - R
        if method == "projective":
            if n_subspaces is None:
                msg = "n_subspaces: required for method='projective'"
                raise ValueError(msg)
            K = as_int(n_subspaces, "n_subspaces", low=1)
            j = as_int(rank, "rank", low=1, high=d)
        else:
            if n_subspaces not in (None, 1):
                msg = f"n_subspaces: only for method='projective', got {n_subspaces!r}"
                raise ValueError(msg)
            K = 1
            j = as_int(rank, "rank", low=1, high=min(n, d))
        # Random but valid state (every fitted layer overwrites it): the first R rows exact.
        self.register_buffer("exact_indices", torch.arange(R, dtype=torch.int64))
        self.exact_rows = nn.Parameter(torch.randn(R, d, dtype=dtype))
        if method == "projective":
            self.register_buffer("labels", torch.randint(0, K, (m,), dtype=torch.int64))
            self.coefficients = nn.Parameter(torch.randn(m, j, dtype=dtype))
            bases = torch.empty(K, d, j, dtype=dtype)
            for c in range(K):
                nn.init.orthogonal_(bases[c])
            self.bases = nn.Parameter(bases)
        else:
            self.U = nn.Parameter(torch.randn(m, j, dtype=dtype))
            self.Vt = nn.Parameter(torch.empty(j, d, dtype=dtype))
            nn.init.orthogonal_(self.Vt)

    # -- sizes (derived from the tensors, so they follow a loaded state_dict) --

    @property
    def _kind_names(self) -> tuple[str, ...]:
        return _PROJECTIVE if self.method == "projective" else _LOWRANK

    @property
    def n_exact(self) -> int:
        """R, the rows stored exactly."""
        return int(self.exact_indices.numel())

    @property
    def rank(self) -> int:
        """k (low rank) or j, each subspace's dimension (projective)."""
        return int(self.bases.shape[2] if self.method == "projective" else self.Vt.shape[0])

    @property
    def n_subspaces(self) -> int:
        """K (projective); 1 for low rank."""
        return int(self.bases.shape[0]) if self.method == "projective" else 1

    @property
    def n_values(self) -> int:
        """Learnable values: ``sum(p.numel() for p in self.parameters())``."""
        return sum(p.numel() for p in self.parameters())

    @property
    def n_indices(self) -> int:
        """Stored integers: exact-row indices and (projective) labels (buffers)."""
        return sum(getattr(self, b).numel() for b in _INDEX_NAMES if hasattr(self, b))

    @property
    def n_params(self) -> int:
        """Every number stored: ``n_values + n_indices`` (= ``RowDoped.n_params``, plus the
        bias of a Linear)."""
        return self.n_values + self.n_indices

    # -- evaluation --

    def _n_d(self) -> tuple[int, int]:
        """(rows of the table or out_features, embedding_dim or in_features)."""
        return self._table_shape

    def _rest_indices(self) -> Tensor:
        n = self._n_d()[0]
        keep = torch.ones(n, dtype=torch.bool)
        keep[self.exact_indices] = False
        return keep.nonzero().squeeze(1)

    def _factor_rows(self, t: Tensor, pad: Optional[int] = None) -> Tensor:
        """Factor rows ``t`` (int64, (M,)) of the non-exact part, shape (M, d)."""
        if self.method != "projective":
            return F.embedding(t, self.U, pad) @ self.Vt
        if self.n_subspaces == 1:
            return F.embedding(t, self.coefficients, pad) @ self.bases[0].T
        # The fused C++ lookup (ProjectiveEmbedding's) takes bases as (K, j, d): a K*j*d
        # copy per call, differentiable.
        return projective_lookup(t, self.coefficients, self.bases.transpose(1, 2).contiguous(),
                                 self.labels, pad)

    def _table(self) -> Tensor:
        """The (n, d) matrix represented, detached (for reports and tests, not forwards)."""
        n, d = self._n_d()
        with torch.no_grad():
            out = self.exact_rows.new_empty(n, d)
            R = self.n_exact
            out[self._rest_indices()] = self._factor_rows(torch.arange(n - R))
            out[self.exact_indices] = self.exact_rows
        return out

    # -- conversion --

    def to_row_doped(self) -> RowDoped:
        """The current (possibly trained) state as an :class:`lpfast.RowDoped` of the
        (n, d) table / (out, in) weight; ``error`` and ``cost`` are NaN (not re-measured),
        the bias of a Linear is not included."""
        arrays = {name: _to_numpy(getattr(self, name)) for name in self._kind_names}
        info = getattr(self, "fit_info", None)
        return RowDoped(method=self.method, p=self.p, shape=self._n_d(), rank=self.rank,
                        n_subspaces=self.n_subspaces,
                        budget=getattr(info, "budget", None), **arrays)

    @staticmethod
    def _as_result(result: Any) -> RowDoped:
        if isinstance(result, dict):
            return RowDoped.from_dict(result)
        if not isinstance(result, RowDoped):
            msg = (f"result: expected an lpfast.RowDoped (or its to_dict()), got "
                   f"{type(result).__name__}")
            raise TypeError(msg)
        return result

    @staticmethod
    def _layout_of(res: RowDoped, dtype: Optional[torch.dtype]) -> dict[str, Any]:
        """Constructor keywords of a layer holding ``res`` (dtype default: the result's)."""
        return {"method": res.method,
                "n_subspaces": res.n_subspaces if res.method == "projective" else None,
                "p": res.p,
                "dtype": dtype or (torch.float32 if res.dtype == np.float32 else torch.float64)}

    @staticmethod
    def _fit(weight: Tensor, method: str, budget: Any, ratio: Any, weights: Any,
             fit: dict[str, Any]) -> RowDoped:
        """:func:`lpfast.row_doped_fit` of an (n, d) weight at ``budget`` or ``ratio``."""
        n, d = weight.shape
        budget = fit_budget(n, d, budget, ratio)
        return row_doped_fit(weight.detach(), method, budget, weights=weights, **fit)

    @torch.no_grad()
    def _copy_from(self, result: Any) -> None:
        for name in self._kind_names:
            src = torch.from_numpy(np.ascontiguousarray(getattr(result, name)))
            getattr(self, name).copy_(src)

    # -- state_dict: adopt the stored sizes (R, rank, K), check consistency --

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        names = self._kind_names
        if all(prefix + k in state_dict for k in names):
            self._check_state({k: state_dict[prefix + k] for k in names}, prefix)
            for name in names:
                src, cur = state_dict[prefix + name], getattr(self, name)
                if cur.shape == src.shape:
                    continue
                if name in _INDEX_NAMES:
                    self._buffers[name] = torch.empty(src.shape, dtype=torch.int64)
                else:
                    new = torch.empty(src.shape, dtype=cur.dtype)
                    self._parameters[name] = nn.Parameter(new, requires_grad=cur.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_state(self, st: dict[str, Tensor], prefix: str) -> None:
        n, d = self._n_d()

        def bad(key: str, what: str) -> ValueError:
            return ValueError(f"state_dict[{prefix + key!r}]: {what}")

        for key, t in st.items():
            state_tensor(t, prefix + key, "index" if key in _INDEX_NAMES else "float")
        ex, rows = st["exact_indices"], st["exact_rows"]
        if ex.dim() != 1 or ex.numel() >= n:
            raise bad("exact_indices", f"expected shape (R,) with R < {n}, got {tuple(ex.shape)}")
        R = ex.numel()
        check_state_indices(ex, prefix + "exact_indices", n, increasing=True)
        if tuple(rows.shape) != (R, d):
            raise bad("exact_rows", f"expected shape ({R}, {d}), got {tuple(rows.shape)}")
        if self.method == "projective":
            lab, coef, bases = st["labels"], st["coefficients"], st["bases"]
            if bases.dim() != 3 or bases.shape[1] != d or bases.shape[0] < 1 or bases.shape[2] < 1:
                raise bad("bases", f"expected shape (K, {d}, j), got {tuple(bases.shape)}")
            K, j = int(bases.shape[0]), int(bases.shape[2])
            if tuple(coef.shape) != (n - R, j):
                raise bad("coefficients", f"expected shape ({n - R}, {j}), got {tuple(coef.shape)}")
            if tuple(lab.shape) != (n - R,):
                raise bad("labels", f"expected shape ({n - R},), got {tuple(lab.shape)}")
            check_state_indices(lab, prefix + "labels", K)
        else:
            U, Vt = st["U"], st["Vt"]
            if Vt.dim() != 2 or Vt.shape[1] != d or Vt.shape[0] < 1:
                raise bad("Vt", f"expected shape (k, {d}), got {tuple(Vt.shape)}")
            k = int(Vt.shape[0])
            if tuple(U.shape) != (n - R, k):
                raise bad("U", f"expected shape ({n - R}, {k}), got {tuple(U.shape)}")

    def _extra(self) -> str:
        sub = f", n_subspaces={self.n_subspaces}" if self.method == "projective" else ""
        return (f"method={self.method!r}, rank={self.rank}{sub}, n_exact={self.n_exact}, "
                f"n_params={self.n_params}")


def fit_budget(n: int, d: int, budget: Any, ratio: Any) -> int:
    """The numbers an (n, d) fit may store: ``budget``, or ``floor(n * d / ratio)``."""
    if (budget is None) == (ratio is None):
        msg = "budget, ratio: give exactly one"
        raise ValueError(msg)
    if budget is not None:
        return as_int(budget, "budget", low=1)
    return int(math.floor(n * d / compression_ratio(ratio)))
