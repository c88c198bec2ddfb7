"""Compressed drop-in layers (``torch.nn.Module``, CPU, float32/float64).

* :class:`DopedKroneckerLinear`  ``y = x @ (sum_r kron(A_r, B_r) + S).T + bias`` (Doping,
  arXiv 2102.07071), with the paper's training pieces: :class:`DensitySchedule` +
  :class:`SparsityAnnealer` (anneal S from dense-ish to the target density, keeping the
  largest entries) and co-matrix dropout regularization (``cmr=``, :func:`co_matrix_dropout`).
* :class:`LowRankLinear`, :class:`LowRankEmbedding`  ``W ≈ U @ V`` from an lp subspace
  (``lpfast.lp_subspace``; p = 2 is the truncated SVD, arXiv 2009.05647).
* :class:`ProjectiveEmbedding`  each row on one of k j-dimensional subspaces
  (``lpfast.k_subspaces``, arXiv 2010.04290): n*j + k*j*d stored parameters.

Every layer has ``n_params`` (stored learnable values) and ``dense_weight()`` (the weight it
represents, for reconstruction errors), and its ``state_dict`` round-trips exactly into a
layer built with the same constructor arguments.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import as_float, as_int, as_shape2
from .ops import _plain_inference, doped_kp_matmul, projective_lookup

__all__ = [
    "DensitySchedule",
    "DopedKroneckerLinear",
    "LowRankEmbedding",
    "LowRankLinear",
    "ProjectiveEmbedding",
    "SparsityAnnealer",
    "co_matrix_dropout",
]

_FLOATS = (torch.float32, torch.float64)


# -- shared checks ---------------------------------------------------------------------------

def _dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    if dtype is None:
        dtype = torch.get_default_dtype()
    if dtype not in _FLOATS:
        msg = f"{name}: expected torch.float32 or torch.float64, got {dtype}"
        raise TypeError(msg)
    return dtype


def _device(device: Any) -> None:
    if device is not None and torch.device(device).type != "cpu":
        msg = f"device: lpfast layers run on CPU, got {device}"
        raise ValueError(msg)


def _module(obj: Any, cls: type, name: str) -> None:
    if not isinstance(obj, cls):
        msg = f"{name}: expected a torch.nn.{cls.__name__}, got {type(obj).__name__}"
        raise TypeError(msg)
    for pname, p in obj.named_parameters(recurse=False):
        if p.device.type != "cpu":
            msg = f"{name}: lpfast layers run on CPU, {pname} is on {p.device}"
            raise ValueError(msg)
        if p.dtype not in _FLOATS:
            msg = f"{name}: expected float32 or float64 parameters, {pname} is {p.dtype}"
            raise TypeError(msg)


def _check_input(x: Any, features: int, dtype: torch.dtype) -> None:
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


# -- doped Kronecker -------------------------------------------------------------------------

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
    return F.dropout(values, p, training) if training and p > 0 else values


def _factor_candidates(m: int, n: int, limit: int = 4) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(a_shape, b_shape) pairs with m1*m2 = m, n1*n2 = n, fewest Kronecker parameters first.

    Factors of 1 are avoided when other choices exist (kron with a 1x1 factor is no
    compression).
    """
    def divisors(k: int) -> list[int]:
        return [d for d in range(1, k + 1) if k % d == 0]

    cands = []
    for m1 in divisors(m):
        for n1 in divisors(n):
            m2, n2 = m // m1, n // n1
            trivial = (m1 * n1 == 1) or (m2 * n2 == 1)
            cands.append((trivial, m1 * n1 + m2 * n2, abs(m1 - n1) + abs(m2 - n2),
                          (m1, n1), (m2, n2)))
    cands.sort()
    return [(a, b) for *_, a, b in cands[:limit]]


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
        dtype = _dtype(dtype)
        _device(device)
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
        return co_matrix_dropout(v, self.cmr, self.training)

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
        _check_input(x, self.in_features, self.A.dtype)
        if not self.training:
            parts = self._serving_parts()
            if _plain_inference(x, *(t for t in parts if t is not None)):
                op = self._serving_operator(parts)
                if op is not None:
                    return torch.from_numpy(op(x.detach().numpy()))
        if self.S_values.numel() == 0:
            return doped_kp_matmul(x, self.A, self.B, bias=self.bias, check=False)
        return doped_kp_matmul(x, self.A, self.B, self._effective_values(), self.S_crow_indices,
                               self.S_col_indices, self.bias, check=False)

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
        state.pop("_serving", None)  # a cache, rebuilt on demand: never pickled
        return state

    def to_operator(self, check_finite: bool = True):
        """The layer as an immutable ``lpfast.DopedKronecker`` (masked entries dropped)."""
        from ..kron import DopedKronecker

        S = None
        if self.nnz:
            keep = slice(None) if self.S_mask is None else self.S_mask.bool()
            crow, col, vals = self._compacted(keep)
            S = (crow.numpy(), col.numpy(), vals.detach().numpy())
        bias = None if self.bias is None else self.bias.detach().numpy()
        return DopedKronecker(self.A.detach().numpy(), self.B.detach().numpy(), S, bias,
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
            Fraction of the weight's entries stored in S.
        rank : int >= 1
            Kronecker rank R.
        ratio : float > 1, optional
            Instead of ``density``: the weight's compression ratio ``out*in / (R*(m1*n1 +
            m2*n2) + nnz)``; S gets what the factors leave of the budget.
        n_iter : int >= 0
            Alternation rounds of ``doped_kp_fit``.
        cmr : float in [0, 1)
            Co-matrix dropout probability of the new layer.

        Returns
        -------
        DopedKroneckerLinear, same dtype, with ``fit_info`` (relative error, shapes tried).
        """
        _module(linear, nn.Linear, "linear")
        from ..kron import doped_kp_fit

        W = linear.weight.detach().numpy()
        m, n = W.shape
        rank = as_int(rank, "rank", low=1)
        if ratio is not None:
            ratio = as_float(ratio, "ratio", low=0.0)
            if not ratio > 1:
                msg = f"ratio: expected a compression ratio > 1, got {ratio}"
                raise ValueError(msg)
        else:
            density = as_float(density, "density", low=0.0, high=1.0)
        if (a_shape is None) != (b_shape is None):
            msg = "a_shape, b_shape: give both or neither"
            raise ValueError(msg)
        if a_shape is None:
            cands = _factor_candidates(m, n)
        else:
            (m1, n1), (m2, n2) = as_shape2(a_shape, "a_shape"), as_shape2(b_shape, "b_shape")
            if (m1 * m2, n1 * n2) != (m, n):
                msg = (f"a_shape={a_shape}, b_shape={b_shape}: need (m1*m2, n1*n2) = "
                       f"linear.weight's shape {(m, n)}")
                raise ValueError(msg)
            cands = [((m1, n1), (m2, n2))]
        tried, best = [], None
        for a, b in cands:
            kp = rank * (a[0] * a[1] + b[0] * b[1])
            if ratio is not None:
                budget = m * n / ratio - kp
                if budget < 0:
                    tried.append({"a_shape": a, "b_shape": b, "relative_error": None,
                                  "reason": f"Kronecker factors alone ({kp}) exceed the budget"})
                    continue
                d = math.floor(budget) / (m * n)
            else:
                d = density
            r = min(rank, a[0] * a[1], b[0] * b[1])
            op = doped_kp_fit(W, a, b, density=d, rank=r, n_iter=n_iter)
            err = float(min(op.fit_info["relative_error"]))
            tried.append({"a_shape": a, "b_shape": b, "density": d, "relative_error": err})
            if best is None or err < best[0]:
                best = (err, op, a, b, d, r)
        if best is None:
            msg = (f"ratio: {ratio} leaves no room even for the Kronecker factors of a "
                   f"{m}x{n} weight at rank {rank}; lower the ratio or the rank")
            raise ValueError(msg)
        err, op, a, b, d, r = best
        layer = cls(n, m, a, b, 0.0, rank=r, bias=linear.bias is not None, cmr=cmr,
                    dtype=linear.weight.dtype)
        layer.load_operator_(op)
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        layer.fit_info = {"relative_error": err, "a_shape": a, "b_shape": b, "density": d,
                          "candidates": tried}
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
            indptr, indices, data = (np.asarray(a) for a in op._S)
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
        # S's size (and the mask's presence) varies with pruning: adopt the stored one.
        _resize_from_state_dict(self, state_dict, prefix,
                                ("S_values", "S_crow_indices", "S_col_indices", "S_mask"))
        if prefix + "S_mask" not in state_dict:
            self.S_mask = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DensitySchedule:
    """Density of the doping S at a training step: ``initial`` until ``start``, then down to
    ``target`` at ``end`` along ``target + (initial - target) * (1 - t)^power``, t the
    fraction of [start, end] done (Zhu & Gupta's gradual pruning curve, as used for the
    Doping paper's sparsity annealing; ``power=1`` is linear). Constant ``target`` after.

    Parameters
    ----------
    initial : float in (0, 1]
        Starting density ("dense-ish", e.g. 0.5 or 1.0).
    target : float in [0, initial]
    start, end : int, 0 <= start < end
        Steps (whatever the training loop counts: batches or epochs).
    power : float > 0
    """

    def __init__(self, initial: float, target: float, start: int, end: int,
                 power: float = 3.0):
        self.initial = as_float(initial, "initial", low=0.0, high=1.0)
        self.target = as_float(target, "target", low=0.0, high=self.initial)
        self.start = as_int(start, "start", low=0)
        self.end = as_int(end, "end", low=self.start + 1)
        self.power = as_float(power, "power", low=0.0)
        if not self.power > 0:
            msg = "power: expected power > 0"
            raise ValueError(msg)

    def __call__(self, step: int) -> float:
        t = min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.target + (self.initial - self.target) * (1.0 - t) ** self.power

    def __repr__(self) -> str:
        return (f"DensitySchedule(initial={self.initial}, target={self.target}, "
                f"start={self.start}, end={self.end}, power={self.power})")


class SparsityAnnealer:
    """Applies a :class:`DensitySchedule` to doped layers during training.

    Call :meth:`step` once per training step (after ``optimizer.step()``): every ``every``
    steps each layer is pruned to the schedule's density, keeping its largest-magnitude
    entries (:meth:`DopedKroneckerLinear.prune_`). :meth:`finalize` prunes to the target and
    compacts S (rebuild the optimizer afterwards if training goes on).

    Parameters
    ----------
    layers : nn.Module or iterable of DopedKroneckerLinear
        A model (all its DopedKroneckerLinear modules) or the layers themselves.
    schedule : DensitySchedule or callable(step) -> density
    every : int >= 1
    """

    def __init__(self, layers: Union[nn.Module, Iterable[DopedKroneckerLinear]],
                 schedule: Callable[[int], float], every: int = 1):
        if isinstance(layers, nn.Module):
            found = [m for m in layers.modules() if isinstance(m, DopedKroneckerLinear)]
        else:
            found = list(layers)
        if not found or not all(isinstance(m, DopedKroneckerLinear) for m in found):
            msg = "layers: expected a module holding DopedKroneckerLinear layers, or such layers"
            raise ValueError(msg)
        if not callable(schedule):
            msg = f"schedule: expected a DensitySchedule or callable(step), got {type(schedule).__name__}"
            raise TypeError(msg)
        self.layers, self.schedule = found, schedule
        self.every = as_int(every, "every", low=1)
        self.step_count = 0
        self.density = float(schedule(0))

    def step(self) -> float:
        """Advance one step; prune when due. Returns the density now in force."""
        self.step_count += 1
        if self.step_count % self.every == 0:
            self.density = float(self.schedule(self.step_count))
            for layer in self.layers:
                layer.prune_(self.density)
        return self.density

    def finalize(self) -> None:
        """Prune every layer to the final density and drop the pruned entries."""
        final = getattr(self.schedule, "target", None)
        for layer in self.layers:
            if final is not None:
                layer.prune_(final)
            layer.compact_()


# -- low rank --------------------------------------------------------------------------------

def _lp_factors(E: Tensor, rank: int, p: float, name: str, **fit: Any) -> tuple[Tensor, Tensor, Any]:
    from ..subspace import lp_subspace

    p = as_float(p, "p", low=1.0)
    high = min(E.shape)
    rank = as_int(rank, "rank", low=1, high=high)
    res = lp_subspace(E.detach().numpy(), rank, p, **fit)
    U, Vt = res.factorize()
    return torch.from_numpy(np.ascontiguousarray(U)), torch.from_numpy(Vt.copy()), res


class LowRankLinear(nn.Module):
    """``y = (x @ V.T) @ U.T + bias``: a Linear whose (out, in) weight is ``U @ V``.

    Parameters
    ----------
    in_features, out_features : int
    rank : int >= 1
    bias : bool
    dtype : torch.float32 or torch.float64

    Attributes
    ----------
    V : Parameter, shape (rank, in_features)   (orthonormal rows after ``from_linear``)
    U : Parameter, shape (out_features, rank)
    bias : Parameter, shape (out_features,), or None

    ``n_params = rank * (in + out) (+ out)``; the forward costs ``rank * (in + out)``
    multiply-adds per row instead of ``in * out``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *,
                 dtype: Optional[torch.dtype] = None, device: Any = None):
        super().__init__()
        self.in_features = as_int(in_features, "in_features", low=1)
        self.out_features = as_int(out_features, "out_features", low=1)
        self.rank = as_int(rank, "rank", low=1)
        dtype = _dtype(dtype)
        _device(device)
        self.V = nn.Parameter(torch.empty(self.rank, self.in_features, dtype=dtype))
        self.U = nn.Parameter(torch.empty(self.out_features, self.rank, dtype=dtype))
        nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.U, a=math.sqrt(5))
        if bias:
            b = 1.0 / math.sqrt(self.in_features)
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=dtype).uniform_(-b, b))
        else:
            self.register_parameter("bias", None)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (..., in_features) -> (..., out_features)."""
        _check_input(x, self.in_features, self.U.dtype)
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def dense_weight(self) -> Tensor:
        """``U @ V``, shape (out, in), detached."""
        with torch.no_grad():
            return self.U @ self.V

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, p: float = 1.0, **fit: Any) -> LowRankLinear:
        """Factor ``linear.weight`` (out, in) on the lp subspace of its rows.

        Parameters
        ----------
        linear : torch.nn.Linear, float32/float64, CPU
        rank : int, 1 <= rank <= min(out, in)
        p : float >= 1
            lp exponent of ``lpfast.lp_subspace`` (p = 2: truncated SVD, the baseline;
            p = 1: robust to outlier neurons).
        **fit
            Passed to ``lpfast.lp_subspace`` (``max_iter``, ``tol``, ``coreset``, ``seed`` …).

        Returns
        -------
        LowRankLinear with V = basis.T (rank, in), U = W @ basis (out, rank), the bias copied,
        and ``fit_info`` (the ``LpSubspace`` result).
        """
        _module(linear, nn.Linear, "linear")
        U, V, res = _lp_factors(linear.weight, rank, p, "linear", **fit)
        layer = cls(linear.in_features, linear.out_features, U.shape[1],
                    bias=linear.bias is not None, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.U.copy_(U)
            layer.V.copy_(V)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.fit_info = res
        return layer


def _check_embedding(emb: Any) -> None:
    _module(emb, nn.Embedding, "emb")
    if emb.max_norm is not None or emb.sparse:
        msg = "emb: max_norm and sparse=True embeddings are not supported"
        raise ValueError(msg)


def _check_indices(x: Any, n: int) -> None:
    if not isinstance(x, Tensor):
        msg = f"input: expected a torch.Tensor of indices, got {type(x).__name__}"
        raise TypeError(msg)
    if x.dtype not in (torch.int32, torch.int64):
        msg = f"input: expected int32 or int64 indices, got {x.dtype}"
        raise TypeError(msg)


class LowRankEmbedding(nn.Module):
    """Embedding whose (n, d) table is ``weight @ proj``: a lookup of rank-k rows, then one
    (k, d) product.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    rank : int >= 1
    padding_idx : int, optional
        As ``nn.Embedding``: that row gets no gradient.
    dtype : torch.float32 or torch.float64

    Attributes
    ----------
    weight : Parameter, shape (num_embeddings, rank)
    proj : Parameter, shape (rank, embedding_dim)

    ``n_params = rank * (n + d)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int,
                 padding_idx: Optional[int] = None, *, dtype: Optional[torch.dtype] = None,
                 device: Any = None):
        super().__init__()
        self.num_embeddings = as_int(num_embeddings, "num_embeddings", low=1)
        self.embedding_dim = as_int(embedding_dim, "embedding_dim", low=1)
        self.rank = as_int(rank, "rank", low=1)
        self.padding_idx = _padding(padding_idx, self.num_embeddings)
        dtype = _dtype(dtype)
        _device(device)
        self.weight = nn.Parameter(torch.randn(self.num_embeddings, self.rank, dtype=dtype))
        self.proj = nn.Parameter(torch.empty(self.rank, self.embedding_dim, dtype=dtype))
        nn.init.orthogonal_(self.proj)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        """Indices (...) -> (..., embedding_dim)."""
        _check_indices(x, self.num_embeddings)
        return F.embedding(x, self.weight, self.padding_idx) @ self.proj

    def dense_weight(self) -> Tensor:
        with torch.no_grad():
            return self.weight @ self.proj

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"
                + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}"))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, rank: int, p: float = 1.0, **fit: Any) -> LowRankEmbedding:
        """Factor ``emb.weight`` (n, d) on the lp subspace of its rows (``lpfast.lp_subspace``).

        Parameters
        ----------
        emb : torch.nn.Embedding, float32/float64, CPU (no max_norm, not sparse)
        rank : int, 1 <= rank <= min(n, d)
        p : float >= 1 (p = 2: truncated SVD; p = 1: robust, arXiv 2009.05647)
        **fit : passed to ``lpfast.lp_subspace``

        Returns
        -------
        LowRankEmbedding with weight = E @ basis (n, rank), proj = basis.T (rank, d), and
        ``fit_info`` (the ``LpSubspace``).
        """
        _check_embedding(emb)
        U, V, res = _lp_factors(emb.weight, rank, p, "emb", **fit)
        layer = cls(emb.num_embeddings, emb.embedding_dim, U.shape[1], emb.padding_idx,
                    dtype=emb.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(U)
            layer.proj.copy_(V)
        layer.fit_info = res
        return layer


def _padding(padding_idx: Any, n: int) -> Optional[int]:
    if padding_idx is None:
        return None
    idx = as_int(padding_idx, "padding_idx", low=-n, high=n - 1)
    return idx + n if idx < 0 else idx


# -- projective clustering -------------------------------------------------------------------

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
        self.num_embeddings = as_int(num_embeddings, "num_embeddings", low=1)
        self.embedding_dim = as_int(embedding_dim, "embedding_dim", low=1)
        self.n_subspaces = as_int(n_subspaces, "n_subspaces", low=1)
        self.dim = as_int(dim, "dim", low=1)
        self.padding_idx = _padding(padding_idx, self.num_embeddings)
        dtype = _dtype(dtype)
        _device(device)
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
        _check_indices(x, self.num_embeddings)
        # One fused C++ pass (ids bounds-checked there: IndexError), gradients in C++ too.
        return projective_lookup(x, self.coef, self.bases, self.labels, self.padding_idx,
                                 check=False)

    def dense_weight(self) -> Tensor:
        """The (n, d) table, detached."""
        with torch.no_grad():
            return torch.bmm(self.coef.unsqueeze(1), self.bases[self.labels]).squeeze(1)

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
        _check_embedding(emb)
        from ..projective import k_subspaces

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
