"""Row-doped layers: a low-rank or k-subspace factorization plus rows stored exactly.

The torch side of :func:`lpfast.row_doped_fit` / :func:`lpfast.plan_compression`:

* :class:`RowDopedEmbedding`  ``nn.Embedding`` whose row i is ``exact_rows[s]`` when
  ``i == exact_indices[s]``, else the factorization's row (see :class:`lpfast.RowDoped`);
* :class:`RowDopedLinear`  ``nn.Linear`` whose weight rows (output units) are stored the
  same way: ``y[..., rest] = x @ Vt.T @ U.T``, ``y[..., exact] = x @ exact_rows.T``.

Tensors and layout are those of ``RowDoped.to_dict()`` (names included): ``exact_indices``
(int64, (R,), sorted), ``exact_rows`` ((R, d)), and for the other ``n - R`` rows in
increasing row order either ``U`` ((n-R, k)) and ``Vt`` ((k, d)) (methods ``"svd"``,
``"lp"``) or ``labels`` (int64, (n-R,)), ``coefficients`` ((n-R, j)) and ``bases``
((K, d, j)) (``"projective"``). A non-exact row i reads factor row
``t = i - searchsorted(exact_indices, i)``. No dense (n, d) table is formed by a forward.

Parameters vs buffers
---------------------
The float arrays (``exact_rows``, ``U``, ``Vt`` / ``coefficients``, ``bases``, and a
Linear's ``bias``) are ``nn.Parameter``\\ s: trainable, and what ``module.parameters()``
(hence ``lpfast.torch.compress``'s ``params_*``) counts. The integer arrays
(``exact_indices``, ``labels``) are buffers: stored and saved in the ``state_dict``, not
trained. ``n_values`` counts the former, ``n_indices`` the latter, and ``n_params =
n_values + n_indices`` is every number stored, which equals :attr:`lpfast.RowDoped.n_params`
(plus ``out_features`` for a Linear's bias, which a RowDoped of the weight does not hold).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._validate import as_int
from .._checks import check_embedding, check_indices, check_input, check_module, embedding_shape
from ._row_doped_base import RowDopedBase

__all__ = ["RowDopedEmbedding", "RowDopedLinear"]


class RowDopedEmbedding(RowDopedBase):
    """Embedding whose (n, d) table is a factorization plus R rows stored exactly.

    Row i is ``exact_rows[s]`` if ``i == exact_indices[s]``; else, with ``t = i -
    searchsorted(exact_indices, i)``, ``U[t] @ Vt`` (low rank) or
    ``coefficients[t] @ bases[labels[t]].T`` (projective). Lookups gather only the
    requested rows: O(N log R) to find the exact ones, ``N*k*d`` multiply-adds
    (``N*j*d``) through the factors, like ``nn.Embedding(n, k)`` followed by
    ``nn.Linear(k, d)``, then the exact ids' rows copied over their outputs. Measured
    (30522 x 384, k = 40, R = 600, float32, one thread, 4096 ids): 2.3 ms vs 1.7 ms for
    ``LowRankEmbedding`` of the same rank; 48 vs 15 us for 16 ids (per-call overhead).

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        n and d.
    rank : int
        k (low rank, ``1 <= k <= min(n, d)``) or j (projective, ``1 <= j <= d``).
    n_exact : int, default 0
        R, ``0 <= R < n``.
    method : {"svd", "lp", "projective"}, default "svd"
        The factorization kind (``"svd"`` and ``"lp"`` share the low-rank layout; the name
        and ``p`` are kept as metadata for :meth:`to_row_doped`).
    n_subspaces : int, optional
        K, required for ``"projective"``.
    p : float, optional
        Exponent of the fit (metadata; default 2).
    padding_idx : int, optional
        As ``nn.Embedding``: that row's stored values (its exact row, or its ``U`` /
        ``coefficients`` row) get no gradient.
    dtype : torch.float32 or torch.float64

    Attributes
    ----------
    exact_indices : buffer, int64, (R,)
    exact_rows : Parameter, (R, d)
    U : Parameter, (n - R, k); Vt : Parameter, (k, d)             low rank
    labels : buffer, int64, (n - R,); coefficients : Parameter, (n - R, j);
    bases : Parameter, (K, d, j)                                 projective
    n_params : int
        ``n_values + n_indices``, equal to ``RowDoped.n_params`` of the same state.

    Notes
    -----
    ``load_state_dict`` adopts the stored R, rank and K (n, d and the method must match),
    so a state can be loaded into a layer built with other sizes; the tensors are checked
    (shapes, sorted in-range indices, labels < K) and errors name the key.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, n_exact: int = 0, *,
                 method: str = "svd", n_subspaces: Optional[int] = None,
                 p: Optional[float] = None, padding_idx: Optional[int] = None,
                 dtype: Optional[torch.dtype] = None, device: Any = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = embedding_shape(
            num_embeddings, embedding_dim, padding_idx, min_rows=2)
        self._init_storage(self.num_embeddings, self.embedding_dim, rank, n_exact, method,
                           n_subspaces, p, dtype, device)

    def _pad_slots(self) -> tuple[Optional[int], Optional[int]]:
        """(position in exact_rows, factor row) of padding_idx; one of them is None."""
        if self.padding_idx is None:
            return None, None
        i = self.padding_idx
        s = int(torch.searchsorted(self.exact_indices, torch.tensor(i)))
        if s < self.n_exact and int(self.exact_indices[s]) == i:
            return s, None
        return None, i - s

    def forward(self, x: Tensor) -> Tensor:
        """Indices ``x`` (int32/int64, any shape (...)) -> (..., embedding_dim)."""
        check_indices(x)
        if x.device.type != "cpu":
            msg = f"input: lpfast layers run on CPU, got device {x.device}"
            raise ValueError(msg)
        n, d = self.num_embeddings, self.embedding_dim
        flat = x.reshape(-1).to(torch.int64)
        if flat.numel():
            lo, hi = torch.aminmax(flat)
            if int(lo) < 0 or int(hi) >= n:
                msg = f"input: expected indices in [0, {n}), got range [{int(lo)}, {int(hi)}]"
                raise ValueError(msg)
        s_pad, t_pad = self._pad_slots()
        R = self.n_exact
        if R == 0:
            return self._factor_rows(flat, t_pad).reshape(*x.shape, d)
        pos = torch.searchsorted(self.exact_indices, flat)
        # Every id goes through the factorization (an exact id i reads some factor row: its
        # t = i - pos may be n - R, hence the clamp), then the exact ids are overwritten:
        # the output is written once in id order, no scatter of the (many) factor rows.
        # The overwritten rows pass no gradient to the factors (index_copy_'s backward).
        out = self._factor_rows((flat - pos).clamp_(max=n - R - 1), t_pad)
        is_exact = self.exact_indices[pos.clamp(max=R - 1)] == flat
        ex = is_exact.nonzero().squeeze(1)
        if ex.numel():
            rows = F.embedding(pos[ex], self.exact_rows, s_pad)
            if self.method == "projective" and self.n_subspaces > 1:
                out = out.index_copy(0, ex, rows)  # a custom op's output: no in-place edit
            else:
                out.index_copy_(0, ex, rows)
        return out.reshape(*x.shape, d)

    def dense_weight(self) -> Tensor:
        """The (n, d) table, detached (formed only on request, never by a forward)."""
        return self._table()

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._extra()}{pad}"

    @classmethod
    def from_row_doped(cls, result: Any, *, padding_idx: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None) -> RowDopedEmbedding:
        """The layer of a fitted :class:`lpfast.RowDoped` (or its ``to_dict()``).

        Parameters
        ----------
        result : RowDoped or dict
            Of an (n, d) embedding table; float32/float64.
        padding_idx : int, optional
        dtype : torch.float32 or torch.float64, optional
            Default: the result's dtype.

        Returns
        -------
        RowDopedEmbedding
            Holding copies of the result's arrays (``fit_info`` = the result); its forward
            equals ``result.lookup(ids)``.
        """
        res = cls._as_result(result)
        n, d = res.shape
        layer = cls(n, d, res.rank, res.n_exact, padding_idx=padding_idx,
                    **cls._layout_of(res, dtype))
        layer._copy_from(res)
        layer.fit_info = res
        return layer

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, method: str = "svd", budget: Optional[int] = None,
                       *, ratio: Optional[float] = None, weights: Any = None,
                       **fit: Any) -> RowDopedEmbedding:
        """Fit ``emb.weight`` (n, d) with :func:`lpfast.row_doped_fit` and build the layer.

        Parameters
        ----------
        emb : torch.nn.Embedding, float32/float64, CPU (no max_norm, not sparse)
        method : {"svd", "lp", "projective"}
        budget : int, optional
            Numbers to store at most (values, exact-row indices and labels all count).
        ratio : float > 1, optional
            Instead of ``budget``: ``budget = floor(n * d / ratio)``.
        weights : array_like or tensor, shape (n,), optional
            Row weights, e.g. ``lpfast.usage_weights(token_counts)``.
        **fit
            Passed to ``row_doped_fit`` (``p``, ``rank``, ``n_exact``, ``n_subspaces``,
            ``seed``, ``n_rounds``, ``exact_fractions``, ...).

        Returns
        -------
        RowDopedEmbedding with ``padding_idx`` kept and ``fit_info`` (the ``RowDoped``);
        ``layer.n_params <= budget``.
        """
        check_embedding(emb)
        res = cls._fit(emb.weight, method, budget, ratio, weights, fit)
        return cls.from_row_doped(res, padding_idx=emb.padding_idx)


class RowDopedLinear(RowDopedBase):
    """Linear layer whose (out, in) weight rows (output units) are a factorization plus R
    rows stored exactly: ``y = x @ W.T + bias`` with

    * ``y[..., exact_indices] = x @ exact_rows.T``,
    * ``y[..., rest] = (x @ Vt.T) @ U.T`` (low rank) or, per subspace c,
      ``y[..., rest_c] = (x @ bases[c]) @ coefficients[rest_c].T`` (projective),

    where ``rest`` are the other output units in increasing order. Cost per input row:
    ``k*(in + out - R) + R*in`` multiply-adds (low rank) instead of ``in*out``, plus one
    gather of the outputs into unit order. Measured (768 -> 3072, k = 96, R = 64, float32,
    one thread): batch 1 0.068 ms (``LowRankLinear`` 0.044, ``nn.Linear`` 0.17), batch 128
    1.38 ms (0.99, 7.5).

    Parameters
    ----------
    in_features, out_features : int
        d and n (the weight is (n, d)).
    rank, n_exact, method, n_subspaces, p : as :class:`RowDopedEmbedding`
    bias : bool, default True
    dtype : torch.float32 or torch.float64

    Attributes
    ----------
    exact_indices, exact_rows, U, Vt / labels, coefficients, bases : as RowDopedEmbedding
    bias : Parameter, (out_features,), or None
    n_params : int
        ``n_values + n_indices`` = ``RowDoped.n_params`` of the weight + ``out_features``
        with a bias.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, n_exact: int = 0,
                 bias: bool = True, *, method: str = "svd", n_subspaces: Optional[int] = None,
                 p: Optional[float] = None, dtype: Optional[torch.dtype] = None,
                 device: Any = None):
        super().__init__()
        self.in_features = as_int(in_features, "in_features", low=1)
        self.out_features = as_int(out_features, "out_features", low=2)
        self._init_storage(self.out_features, self.in_features, rank, n_exact, method,
                           n_subspaces, p, dtype, device)
        if bias:
            b = 1.0 / math.sqrt(self.in_features)
            self.bias = nn.Parameter(torch.empty(self.out_features,
                                                 dtype=self.exact_rows.dtype).uniform_(-b, b))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in_features) -> (..., out_features)."""
        check_input(x, self.in_features, self.exact_rows.dtype)
        n, d = self.out_features, self.in_features
        lead = x.shape[:-1]
        R = self.n_exact
        if self.method != "projective" and R == 0:
            return F.linear(F.linear(x, self.Vt), self.U, self.bias)
        x2 = x.reshape(-1, d)
        where, order, counts = self._layout()
        # Outputs computed in blocks (factor rows, then exact rows), then put in unit order
        # by one gather: faster than scattering columns (index_copy_ along dim 1).
        if self.method != "projective":
            blocks = [F.linear(F.linear(x2, self.Vt), self.U)]
        else:
            K, j = self.n_subspaces, self.rank
            # One GEMM against every basis, then each subspace's output units.
            Z = x2 @ self.bases.permute(1, 0, 2).reshape(d, K * j)
            coef = self.coefficients[order]
            blocks = [F.linear(Z[:, c * j:(c + 1) * j], cc)
                      for c, cc in enumerate(torch.split(coef, counts)) if counts[c]]
        if R:
            blocks.append(F.linear(x2, self.exact_rows))
        y = torch.cat(blocks, 1).index_select(1, where)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, n)

    def _layout(self) -> tuple[Tensor, Optional[Tensor], list[int]]:
        """(where, order, counts): output unit u is column ``where[u]`` of the blocks;
        ``order`` sorts the non-exact units by subspace, ``counts`` per subspace (projective).

        Derived from the index buffers and cached until they change (a load_state_dict, an
        in-place edit: tracked by data pointer and version counter).
        """
        bufs = [self.exact_indices] + ([self.labels] if self.method == "projective" else [])
        key = tuple((b.data_ptr(), b._version, b.numel()) for b in bufs)
        cached = self.__dict__.get("_layout_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        n = self.out_features
        rest = self._rest_indices()
        order, counts = None, []
        if self.method == "projective":
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.n_subspaces).tolist()
            rest = rest[order]
        where = torch.empty(n, dtype=torch.int64)
        where[torch.cat([rest, self.exact_indices])] = torch.arange(n)
        self.__dict__["_layout_cache"] = (key, (where, order, counts))
        return where, order, counts

    def dense_weight(self) -> Tensor:
        """The (out, in) weight, detached (formed only on request, never by a forward)."""
        return self._table()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self._extra()}, bias={self.bias is not None}")

    @classmethod
    def from_row_doped(cls, result: Any, bias: Union[Tensor, None, bool] = None, *,
                       dtype: Optional[torch.dtype] = None) -> RowDopedLinear:
        """The layer of a :class:`lpfast.RowDoped` of an (out, in) weight.

        Parameters
        ----------
        result : RowDoped or dict
        bias : tensor of shape (out,), True (a fresh random bias), or None/False (no bias)
        dtype : torch.float32 or torch.float64, optional (default: the result's)

        Returns
        -------
        RowDopedLinear (``fit_info`` = the result); its weight is ``result.reconstruct()``.
        """
        res = cls._as_result(result)
        n, d = res.shape
        if bias is not None and not isinstance(bias, (bool, Tensor)):
            msg = (f"bias: expected a tensor of shape ({n},), a bool or None, "
                   f"got {type(bias).__name__}")
            raise TypeError(msg)
        if isinstance(bias, Tensor) and tuple(bias.shape) != (n,):
            msg = f"bias: expected shape ({n},), got {tuple(bias.shape)}"
            raise ValueError(msg)
        layer = cls(d, n, res.rank, res.n_exact, bias=bias is not None and bias is not False,
                    **cls._layout_of(res, dtype))
        layer._copy_from(res)
        if isinstance(bias, Tensor):
            with torch.no_grad():
                layer.bias.copy_(bias.detach())
        layer.fit_info = res
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str = "svd", budget: Optional[int] = None,
                    *, ratio: Optional[float] = None, weights: Any = None,
                    **fit: Any) -> RowDopedLinear:
        """Fit ``linear.weight`` (out, in; rows = output units) with
        :func:`lpfast.row_doped_fit`; the bias is copied.

        Parameters
        ----------
        linear : torch.nn.Linear, float32/float64, CPU
        method : {"svd", "lp", "projective"}
        budget : int, optional
            Numbers to store for the *weight* (the bias is not included).
        ratio : float > 1, optional
            Instead of ``budget``: ``budget = floor(out * in / ratio)``.
        weights : array_like or tensor, shape (out,), optional
            Weights of the output units.
        **fit
            Passed to ``row_doped_fit``.

        Returns
        -------
        RowDopedLinear with ``fit_info`` (the ``RowDoped``);
        ``layer.n_params <= budget + out_features`` (with a bias).
        """
        check_module(linear, nn.Linear, "linear")
        res = cls._fit(linear.weight, method, budget, ratio, weights, fit)
        return cls.from_row_doped(res, linear.bias)
