"""The doped Kronecker layer: ``y = x @ (sum_r kron(A_r, B_r) + S).T + bias`` (Doping,
arXiv 2102.07071), S extremely sparse, with co-matrix dropout (``cmr=``,
:func:`co_matrix_dropout`) and the pruning that sparsity annealing drives
(:meth:`DopedKroneckerLinear.prune_` / ``compact_``; the schedule is in ``annealing.py``).

Forward and backward run in lpfast's C++ kernels (``ops.doped_kp_matmul``); eval-mode calls
without gradients go to a cached ``lpfast.DopedKronecker``. The state_dict round-trips
exactly into a layer built with the same constructor arguments (S's size adopted on load).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ... import DopedKronecker, doped_kp_fit
from ..._validate import as_factor_shapes, as_float, as_int, as_shape2
from .._checks import check_input, check_module, check_state_csr, layer_dtype
from .._eager import plain_inference
from ..ops import doped_kp_matmul

__all__ = ["DopedKroneckerLinear", "co_matrix_dropout"]


def _resize_from_state_dict(module: nn.Module, state_dict: dict, prefix: str,
                            names: Iterable[str]) -> None:
    """Give the named (variable-length) tensors the shape/dtype stored in ``state_dict``."""
    for name in names:
        key = prefix + name
        if key not in state_dict:
            continue
        src = state_dict[key]
        cur = getattr(module, name)
        if cur is None and name in module._buffers:
            module._buffers[name] = torch.empty_like(src, device="cpu")
        elif cur is not None and (cur.shape != src.shape or cur.dtype != src.dtype):
            new = torch.empty(src.shape, dtype=src.dtype if not cur.is_floating_point() else cur.dtype)
            if isinstance(cur, nn.Parameter):
                module._parameters[name] = nn.Parameter(new, requires_grad=cur.requires_grad)
            else:
                module._buffers[name] = new



def co_matrix_dropout(values: Tensor, p: float, training: bool = True) -> Tensor:
    """Co-matrix dropout regularization (CMR, Doping paper, arXiv 2102.07071).

    Drops each stored entry of the sparse co-matrix S independently with probability ``p``
    for this forward pass (survivors scaled by ``1 / (1 - p)``, as ``torch.nn.Dropout``),
    so the Kronecker part cannot lean on any single sparse entry (the paper's "co-matrix
    adaptation"). Identity when ``training`` is False or ``p == 0``.

    Parameters
    ----------
    values : Tensor, shape (nnz,)
        S's stored values.
    p : float in [0, 1)
    training : bool

    Returns
    -------
    Tensor, shape (nnz,), same dtype.
    """
    if not isinstance(values, Tensor) or not values.is_floating_point():
        what = values.dtype if isinstance(values, Tensor) else type(values).__name__
        msg = f"values: expected a floating-point tensor, got {what}"
        raise TypeError(msg)
    p = as_float(p, "p", low=0.0)
    if p >= 1:
        msg = f"p: expected a dropout probability in [0, 1), got {p}"
        raise ValueError(msg)
    return _dropout(values, p, bool(training))


def _dropout(values: Tensor, p: float, training: bool) -> Tensor:
    """:func:`co_matrix_dropout` on checked arguments (the layers' per-call path)."""
    if not training or p == 0:
        return values
    # Not F.dropout: DopedLSTM drops every stored entry of S (millions while annealing
    # starts dense) each step, and F.dropout's bernoulli_ takes ~1.4x the CPU time of this
    # mask (27 vs 19 ms for 1.69M float32 entries, one thread).
    keep = (torch.rand_like(values) >= p).to(values.dtype).mul_(1.0 / (1.0 - p))
    return values * keep




class DopedKroneckerLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W = sum_r kron(A[r], B[r]) + S``, S sparse (doping).

    Parameters
    ----------
    in_features, out_features : int
        ``n1*n2`` and ``m1*m2``.
    a_shape, b_shape : (m1, n1), (m2, n2)
        Kronecker factor shapes (NumPy's ``np.kron`` convention, DESIGN.md).
    density : float in [0, 1]
        Fraction of W's entries stored in S: ``nnz = round(density * out * in)``. A new
        layer gets a random pattern (from torch's RNG) with zero values, so it starts as a
        plain Kronecker layer; :meth:`from_linear` fits pattern and values to a weight.
    rank : int >= 1
        Kronecker rank R.
    bias : bool
    cmr : float in [0, 1)
        Co-matrix dropout probability applied to S's entries in training mode
        (:func:`co_matrix_dropout`); 0 disables it.
    dtype : torch.float32 or torch.float64, default torch's default dtype
    device : CPU only

    Attributes
    ----------
    A : Parameter, shape (R, m1, n1)
    B : Parameter, shape (R, m2, n2)
    S_values : Parameter, shape (nnz,)
    S_crow_indices : buffer, int32 (int64 when needed), shape (out + 1,)
    S_col_indices : buffer, shape (nnz,)
    S_mask : buffer, shape (nnz,), or None
        Set by :meth:`prune_` during annealing: pruned entries are multiplied by 0 (the
        pattern keeps its size, so optimizer state stays valid); :meth:`compact_` drops them.
    bias : Parameter, shape (out,), or None

    Forward and backward run in lpfast's C++ kernels (``lpfast.torch.doped_kp_matmul``).
    """

    def __init__(self, in_features: int, out_features: int, a_shape: Any, b_shape: Any,
                 density: float, rank: int = 1, bias: bool = True, *, cmr: float = 0.0,
                 dtype: Optional[torch.dtype] = None, device: Any = None):
        super().__init__()
        in_features = as_int(in_features, "in_features", low=1)
        out_features = as_int(out_features, "out_features", low=1)
        (m1, n1), (m2, n2) = as_shape2(a_shape, "a_shape"), as_shape2(b_shape, "b_shape")
        if (m1 * m2, n1 * n2) != (out_features, in_features):
            msg = (f"a_shape={a_shape}, b_shape={b_shape}: need (m1*m2, n1*n2) = "
                   f"(out_features, in_features) = {(out_features, in_features)}")
            raise ValueError(msg)
        density = as_float(density, "density", low=0.0, high=1.0)
        rank = as_int(rank, "rank", low=1)
        cmr = as_float(cmr, "cmr", low=0.0)
        if cmr >= 1:
            msg = f"cmr: expected a dropout probability in [0, 1), got {cmr}"
            raise ValueError(msg)
        dtype = layer_dtype(dtype, device)
        self.in_features, self.out_features = in_features, out_features
        self.a_shape, self.b_shape = (m1, n1), (m2, n2)
        self.rank, self.cmr = rank, cmr
        # nn.Linear-like scale: Var(W_ij) = 1 / (3 * in_features) summed over the R terms.
        bound_a = math.sqrt(3.0 / (math.sqrt(3.0 * rank) * n1))
        bound_b = math.sqrt(3.0 / (math.sqrt(3.0 * rank) * n2))
        self.A = nn.Parameter(torch.empty(rank, m1, n1, dtype=dtype).uniform_(-bound_a, bound_a))
        self.B = nn.Parameter(torch.empty(rank, m2, n2, dtype=dtype).uniform_(-bound_b, bound_b))
        size = out_features * in_features
        nnz = int(round(density * size))
        flat = torch.sort(torch.randperm(size)[:nnz]).values
        crow, col = self._csr_from_flat(flat)
        self.S_values = nn.Parameter(torch.zeros(nnz, dtype=dtype))
        self.register_buffer("S_crow_indices", crow)
        self.register_buffer("S_col_indices", col)
        self.register_buffer("S_mask", None)
        if bias:
            b = 1.0 / math.sqrt(in_features)
            self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype).uniform_(-b, b))
        else:
            self.register_parameter("bias", None)

    # -- structure -------------------------------------------------------------------------
    def _csr_from_flat(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """CSR (crow, col) of sorted flat positions; int32 when the indices fit."""
        m, n = self.out_features, self.in_features
        rows, cols = torch.div(flat, n, rounding_mode="floor"), flat % n
        crow = torch.zeros(m + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=m), 0)
        itype = torch.int32 if max(n, flat.numel()) < 2**31 - 1 else torch.int64
        return crow.to(itype), cols.to(itype)

    @property
    def nnz(self) -> int:
        """Entries of S that count: stored ones, less those pruned by the mask."""
        if self.S_mask is None:
            return int(self.S_values.numel())
        return int(self.S_mask.count_nonzero())

    @property
    def density(self) -> float:
        return self.nnz / (self.out_features * self.in_features)

    @property
    def n_params(self) -> int:
        """Learnable values: R*(m1*n1 + m2*n2) + nnz (+ out_features with a bias)."""
        bias = 0 if self.bias is None else self.bias.numel()
        return self.A.numel() + self.B.numel() + self.nnz + bias

    def _effective_values(self) -> Tensor:
        v = self.S_values if self.S_mask is None else self.S_values * self.S_mask
        return _dropout(v, self.cmr, self.training)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in_features) -> (..., out_features), the layer's dtype.

        In eval mode without gradients (``torch.no_grad``/``inference_mode``) the call goes
        to a cached ``lpfast.DopedKronecker`` of the current parameters: it skips the custom
        op's dispatch and serves single rows from its SELL layout (4096 x 4096, 1% doping,
        batch 1: 147 -> 91 us). The cache is dropped by ``train()``/``eval()`` and rebuilt
        when a parameter is replaced or changed in place through autograd-visible ops; after
        edits it cannot see (``.data``, NumPy views, fused optimizers stepping in eval mode)
        call ``invalidate_cache()``.
        """
        check_input(x, self.in_features, self.A.dtype)
        if not self.training:
            parts = self._serving_parts()
            if plain_inference(x, *(t for t in parts if t is not None)):
                op = self._serving_operator(parts)
                if op is not None:
                    return torch.from_numpy(op(x.detach().numpy()))
        if self.S_values.numel() == 0:
            return doped_kp_matmul(x, self.A, self.B, bias=self.bias, check=False)
        return doped_kp_matmul(x, self.A, self.B, self._effective_values(), self.S_crow_indices,
                               self.S_col_indices, self.bias, check=False)

    def effective_weight(self) -> Tensor:
        """The dense W this forward uses, differentiable: ``sum_r kron(A[r], B[r]) + S``
        with the mask applied and, in training mode, co-matrix dropout on S's values.

        For layers that hand the whole weight to a dense kernel (``DopedLSTM`` runs torch's
        fused LSTM with it); gradients reach A, B and ``S_values`` through autograd.
        Shape (out, in); cost O(R * out * in + nnz).
        """
        R, m1, n1 = self.A.shape
        _, m2, n2 = self.B.shape
        # For R = 1 this is the outer product torch.kron computes, multiply for multiply.
        W = torch.einsum("rac,rbd->abcd", self.A, self.B).reshape(m1 * m2, n1 * n2)
        if self.S_values.numel() == 0:
            return W
        W = W.reshape(-1).index_add(0, self._flat_positions(), self._effective_values())
        return W.view(m1 * m2, n1 * n2)

    def _flat_positions(self) -> Tensor:
        """Row-major positions ``row * in + col`` of S's entries (int64), cached while the
        same index tensors hold the same data."""
        crow, col = self._buffers["S_crow_indices"], self._buffers["S_col_indices"]
        key = (crow._version, col._version)
        cached = self.__dict__.get("_positions")
        if cached is None or cached[0] is not crow or cached[1] is not col or cached[2] != key:
            rows = torch.repeat_interleave(torch.arange(self.out_features), crow.long().diff())
            flat = rows * self.in_features + col.long()
            cached = (crow, col, key, flat)
            self.__dict__["_positions"] = cached  # plain attribute: not state, not a submodule
        return cached[3]

    def dense_weight(self) -> Tensor:
        """W = sum_r kron(A[r], B[r]) + S (masked), shape (out, in), detached."""
        with torch.no_grad():
            W = sum(torch.kron(a, b) for a, b in zip(self.A, self.B))
            v = self.S_values if self.S_mask is None else self.S_values * self.S_mask
            rows = torch.repeat_interleave(torch.arange(self.out_features),
                                           self.S_crow_indices.long().diff())
            W = W.index_put((rows, self.S_col_indices.long()), v, accumulate=True)
        return W

    def _serving_parts(self) -> tuple:
        # Straight from the registries: nn.Module.__getattr__ cost ~0.5 us per name per call.
        p, b = self._parameters, self._buffers
        return (p["A"], p["B"], p["S_values"], p["bias"], b["S_crow_indices"],
                b["S_col_indices"], b["S_mask"])

    def _serving_operator(self, parts: tuple):
        """``to_operator()`` cached while the same tensor objects hold the same storage at the
        same version (None for inference tensors, which have no version counter).

        The cache keeps detached views of the storages it was built from, so a storage
        swapped in later (``.double()``, ``.data = ...``) cannot reuse their addresses."""
        try:
            key = tuple(None if t is None else (t._version, t.data_ptr()) for t in parts)
        except RuntimeError:  # inference tensors track no version
            return None
        cached = self.__dict__.get("_serving")
        if (cached is None or cached[2] != key
                or any(a is not b for a, b in zip(cached[0], parts))):
            views = tuple(None if t is None else t.detach() for t in parts)
            # NaN/Inf propagate as in any torch layer instead of raising.
            cached = (parts, views, key, self.to_operator(check_finite=False))
            self.__dict__["_serving"] = cached  # plain attribute: not state, not a submodule
        return cached[3]

    def invalidate_cache(self) -> None:
        """Forget the cached operator of eval-mode calls (after parameter edits that torch
        does not version: ``.data``, NumPy views, fused optimizers)."""
        self.__dict__.pop("_serving", None)

    def train(self, mode: bool = True) -> DopedKroneckerLinear:
        if bool(mode) != self.training:  # leaving or entering training: weights may have moved
            self.invalidate_cache()
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for cache in ("_serving", "_positions"):  # rebuilt on demand: never pickled
            state.pop(cache, None)
        return state

    def to_operator(self, check_finite: bool = True, *, bias: bool = True):
        """The layer as an immutable ``lpfast.DopedKronecker`` (masked entries dropped),
        with the layer's bias unless ``bias=False`` (the weight alone)."""
        S = None
        if self.nnz:
            keep = slice(None) if self.S_mask is None else self.S_mask.bool()
            crow, col, vals = self._compacted(keep)
            S = (crow.numpy(), col.numpy(), vals.detach().numpy())
        b = None if self.bias is None or not bias else self.bias.detach().numpy()
        return DopedKronecker(self.A.detach().numpy(), self.B.detach().numpy(), S, b,
                              check_finite=check_finite)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"a_shape={self.a_shape}, b_shape={self.b_shape}, rank={self.rank}, "
                f"nnz={self.nnz}, bias={self.bias is not None}, cmr={self.cmr}")

    # -- annealing -------------------------------------------------------------------------
    @torch.no_grad()
    def prune_(self, density: float) -> int:
        """Keep the ``round(density * out * in)`` largest-magnitude entries of S; mask the rest.

        Only ever removes entries (a density above the current one changes nothing). The
        pattern keeps its size, so optimizers built on this layer stay valid; call
        :meth:`compact_` when annealing is over.

        Returns
        -------
        int, the entries of S that count afterwards.
        """
        density = as_float(density, "density", low=0.0, high=1.0)
        keep = int(round(density * self.out_features * self.in_features))
        if keep >= self.nnz:
            return self.nnz
        score = self.S_values.detach().abs().clone()
        if self.S_mask is not None:
            score[self.S_mask == 0] = -1.0  # pruned entries stay pruned
        mask = torch.zeros_like(self.S_values)
        if keep:
            mask[torch.topk(score, keep, sorted=False).indices] = 1
        self.S_mask = mask
        self.S_values.mul_(mask)
        return keep

    def _compacted(self, keep: Any) -> tuple[Tensor, Tensor, Tensor]:
        rows = torch.repeat_interleave(torch.arange(self.out_features),
                                       self.S_crow_indices.long().diff())
        n = self.in_features
        flat = rows[keep] * n + self.S_col_indices.long()[keep]
        crow, col = self._csr_from_flat(flat)
        return crow, col, self.S_values.detach()[keep].clone()

    @torch.no_grad()
    def compact_(self) -> DopedKroneckerLinear:
        """Drop the masked entries of S for good (a new ``S_values`` Parameter: rebuild the
        optimizer afterwards). Returns self."""
        if self.S_mask is None:
            return self
        crow, col, vals = self._compacted(self.S_mask.bool())
        self.S_values = nn.Parameter(vals, requires_grad=self.S_values.requires_grad)
        self.S_crow_indices, self.S_col_indices, self.S_mask = crow, col, None
        return self

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, a_shape: Any = None, b_shape: Any = None,
                    density: float = 0.01, rank: int = 1, *, ratio: Optional[float] = None,
                    n_iter: int = 3, cmr: float = 0.0) -> DopedKroneckerLinear:
        """Fit a doped Kronecker layer to ``linear.weight`` with ``lpfast.doped_kp_fit``.

        Parameters
        ----------
        linear : torch.nn.Linear, float32 or float64, CPU
        a_shape, b_shape : (m1, n1), (m2, n2), optional
            Factor shapes. Not given: the few factorizations of (out, in) with the fewest
            Kronecker parameters (no 1x1 factor) are each fitted and the one with the
            lowest relative error is kept (``fit_info["candidates"]``).
        density : float in [0, 1]
            Fraction of the weight's entries stored in S (ignored when ``ratio`` is given).
        rank : int >= 1
            Kronecker rank R, lowered to ``min(m1*n1, m2*n2)`` where the shapes allow less.
        ratio : float > 1, optional
            Instead of ``density``: the weight's compression ratio ``out*in / (R*(m1*n1 +
            m2*n2) + nnz)``; S gets what the factors leave of the budget.
        n_iter : int >= 0
            Alternation rounds of ``doped_kp_fit``.
        cmr : float in [0, 1)
            Co-matrix dropout probability of the new layer.

        Returns
        -------
        DopedKroneckerLinear, same dtype, with ``fit_info``: ``doped_kp_fit``'s, its
        ``relative_error`` the best round's (a float).

        Raises
        ------
        RatioTooSmall (a ValueError)
            ``ratio`` leaves no room for the Kronecker factors of any shape tried.
        """
        check_module(linear, nn.Linear, "linear")
        return cls._fit(linear.weight, linear.bias, a_shape, b_shape, density, rank,
                        ratio=ratio, n_iter=n_iter, cmr=cmr, name="linear.weight")

    @classmethod
    def _fit(cls, weight: Tensor, bias: Optional[Tensor], a_shape: Any, b_shape: Any,
             density: float, rank: int, *, ratio: Optional[float], n_iter: int, cmr: float,
             name: str) -> DopedKroneckerLinear:
        """:meth:`from_linear` on a bare (out, in) weight and optional bias: the one place
        where layers (this one, ``DopedLSTM``'s gate matrices) are fitted by doped_kp_fit."""
        W = weight.detach().numpy()
        m, n = W.shape
        rank = as_int(rank, "rank", low=1)
        if a_shape is not None and b_shape is not None:
            # doped_kp_fit refuses a rank above what given shapes allow; the layer has always
            # lowered it instead (as doped_kp_fit does itself for the shapes it chooses).
            a_shape, b_shape = as_factor_shapes(W.shape, a_shape, b_shape, name)
            rank = min(rank, a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])
        # The factor-shape search, the ratio-to-density budget and the choice of the best
        # shape are the NumPy API's; a ratio given wins over the density default.
        op = doped_kp_fit(W, a_shape, b_shape, density=None if ratio is not None else density,
                          rank=rank, n_iter=n_iter, ratio=ratio)
        info = dict(op.fit_info, relative_error=float(min(op.fit_info["relative_error"])))
        layer = cls(n, m, info["a_shape"], info["b_shape"], 0.0, rank=op.rank,
                    bias=bias is not None, cmr=cmr, dtype=weight.dtype)
        layer.load_operator_(op)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        layer.fit_info = info
        return layer

    @torch.no_grad()
    def load_operator_(self, op: Any) -> DopedKroneckerLinear:
        """Take A, B and S from an ``lpfast.DopedKronecker`` of this layer's shape and rank
        (its bias, if any, is ignored). Returns self."""
        if tuple(op.shape) != (self.out_features, self.in_features) or op.rank != self.rank \
                or op.a_shape != self.a_shape:
            msg = (f"op: expected an operator of shape {(self.out_features, self.in_features)}, "
                   f"a_shape {self.a_shape}, rank {self.rank}; got {op!r}")
            raise ValueError(msg)
        dtype = self.A.dtype
        self.A.copy_(torch.from_numpy(np.array(op.A)))
        self.B.copy_(torch.from_numpy(np.array(op.B)))
        if op.nnz:
            S = op.S  # a csr_array over the operator's own buffers
            indptr, indices, data = S.indptr, S.indices, S.data
            rows = np.repeat(np.arange(self.out_features), np.diff(indptr))
            flat = torch.from_numpy(rows.astype(np.int64) * self.in_features + indices)
            crow, col = self._csr_from_flat(flat)
            vals = torch.from_numpy(np.array(data)).to(dtype)
        else:
            crow, col = self._csr_from_flat(torch.zeros(0, dtype=torch.int64))
            vals = torch.zeros(0, dtype=dtype)
        self.S_values = nn.Parameter(vals, requires_grad=self.S_values.requires_grad)
        self.S_crow_indices, self.S_col_indices, self.S_mask = crow, col, None
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The forward hands S to C++ unchecked: a state_dict is checked once, here.
        check_state_csr(self, state_dict, prefix, (self.out_features, self.in_features))
        # S's size (and the mask's presence) varies with pruning: adopt the stored one.
        _resize_from_state_dict(self, state_dict, prefix,
                                ("S_values", "S_crow_indices", "S_col_indices", "S_mask"))
        if prefix + "S_mask" not in state_dict:
            self.S_mask = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
