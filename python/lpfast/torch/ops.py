"""Differentiable doped Kronecker product and projective-embedding lookup as
``torch.library`` custom ops.

The forward and the whole backward run in lpfast's C++ kernels through zero-copy NumPy
views of contiguous CPU tensors; ``register_fake`` gives shapes to ``torch.compile``, and
the backward is itself a custom op so that it traces too.

Convention (DESIGN.md): ``y = x @ W.T + bias`` with ``W = sum_r kron(A[r], B[r]) + S``,
S in CSR form ``(crow_indices, col_indices, values)`` of shape (m1*m2, n1*n2).

Projective lookup: ``out[..., :] = coef[ids] @ bases[labels[ids]]`` for coefficients
(n, j), labels (n,) and bases (k, j, d), fused in one C++ pass (no per-subspace products).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import _core
from ._checks import check_doped_matmul, check_lookup
from ._eager import plain_inference

__all__ = ["doped_kp_matmul", "projective_lookup"]


def _np(t: Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (a copy only when it is not contiguous)."""
    return t.detach().contiguous().numpy()


def _shape(A: Tensor, B: Tensor) -> tuple[int, int]:
    return A.shape[1] * B.shape[1], A.shape[2] * B.shape[2]


@torch.library.custom_op("lpfast::doped_kp_matmul", mutates_args=(), device_types="cpu")
def _forward(x: Tensor, A: Tensor, B: Tensor, crow: Optional[Tensor], col: Optional[Tensor],
             values: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    m, n = _shape(A, B)
    rows = _np(x).reshape(-1, n)
    out = torch.empty((rows.shape[0], m), dtype=x.dtype)
    indptr, indices, data = (None, None, None) if values is None else (_np(crow), _np(col),
                                                                         _np(values))
    _core.doped_kron_matmul(x=rows, A=_np(A), B=_np(B), indptr=indptr, indices=indices,
                            data=data, bias=None if bias is None else _np(bias), out=out.numpy())
    return out.reshape(*x.shape[:-1], m)


@_forward.register_fake
def _(x, A, B, crow, col, values, bias):
    return x.new_empty((*x.shape[:-1], A.shape[1] * B.shape[1]))


@torch.library.custom_op("lpfast::doped_kp_matmul_backward", mutates_args=(), device_types="cpu")
def _backward(dy: Tensor, x: Tensor, A: Tensor, B: Tensor, crow: Optional[Tensor],
              col: Optional[Tensor], values: Optional[Tensor], need_x: bool, need_factors: bool,
              need_values: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    m, n = _shape(A, B)
    dy_rows, x_rows = _np(dy).reshape(-1, m), _np(x).reshape(-1, n)
    dx = torch.empty(x.shape if need_x else (0,), dtype=x.dtype)
    dA = torch.empty(A.shape if need_factors else (0,), dtype=A.dtype)
    dB = torch.empty(B.shape if need_factors else (0,), dtype=B.dtype)
    dv = torch.empty(values.shape if need_values and values is not None else (0,), dtype=x.dtype)
    if need_x:
        # dx = dy @ W: the same kernel on the transposed operator kron(A.T, B.T) + S.T.
        At = _np(A.transpose(1, 2))
        Bt = _np(B.transpose(1, 2))
        indptr_t = indices_t = data_t = None
        if values is not None:
            import scipy.sparse as sp

            S_t = sp.csr_array((_np(values), _np(col), _np(crow)), shape=(m, n)).T.tocsr()
            itype = _np(crow).dtype
            indptr_t, indices_t, data_t = (S_t.indptr.astype(itype), S_t.indices.astype(itype),
                                           S_t.data)
        _core.doped_kron_matmul(x=dy_rows, A=At, B=Bt, indptr=indptr_t, indices=indices_t,
                                data=data_t, bias=None, out=dx.numpy().reshape(-1, n))
    if need_factors:
        _core.kron_factor_grads(x=x_rows, dy=dy_rows, A=_np(A), B=_np(B), dA=dA.numpy(),
                                dB=dB.numpy())
    if need_values and values is not None:
        _core.csr_sampled_product(dy=dy_rows, x=x_rows, indptr=_np(crow), indices=_np(col),
                                  out=dv.numpy())
    return dx, dA, dB, dv


@_backward.register_fake
def _(dy, x, A, B, crow, col, values, need_x, need_factors, need_values):
    dv = values.shape if need_values and values is not None else (0,)
    return (x.new_empty(x.shape if need_x else (0,)), A.new_empty(A.shape if need_factors else (0,)),
            B.new_empty(B.shape if need_factors else (0,)), x.new_empty(dv))


def _setup_context(ctx, inputs, output):
    x, A, B, crow, col, values, bias = inputs
    ctx.save_for_backward(x, A, B, crow, col, values)
    ctx.has_bias = bias is not None


def _call_backward(*args):
    """The backward custom op (one indirection so tests can observe which grads are asked)."""
    return torch.ops.lpfast.doped_kp_matmul_backward(*args)


def _autograd_backward(ctx, dy):
    x, A, B, crow, col, values = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_x, need_factors = need[0], need[1] or need[2]
    need_values = need[5] and values is not None
    dx = dA = dB = dv = None
    if need_x or need_factors or need_values:
        dx, dA, dB, dv = _call_backward(dy.contiguous(), x, A, B, crow, col, values, need_x,
                                        need_factors, need_values)
    dbias = dy.reshape(-1, dy.shape[-1]).sum(0) if ctx.has_bias and need[6] else None
    return (dx if need[0] else None, dA if need[1] else None, dB if need[2] else None,
            None, None, dv if need_values else None, dbias)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def doped_kp_matmul(x: Tensor, A: Tensor, B: Tensor, S_values: Optional[Tensor] = None,
                    S_crow_indices: Optional[Tensor] = None, S_col_indices: Optional[Tensor] = None,
                    bias: Optional[Tensor] = None, *, check: bool = True) -> Tensor:
    """Differentiable ``x @ W.T + bias``, ``W = sum_r kron(A[r], B[r]) + S`` (CPU tensors).

    Parameters
    ----------
    x : Tensor, shape (..., n1*n2)
    A : Tensor, shape (R, m1, n1) or (m1, n1)
    B : Tensor, shape (R, m2, n2) or (m2, n2)
    S_values, S_crow_indices, S_col_indices : Tensors, optional
        S in CSR form: values (nnz,), crow (m1*m2 + 1,), col (nnz,), int32 or int64.
    bias : Tensor, shape (m1*m2,), optional
    check : bool
        Validate shapes, dtypes and the CSR pattern (O(nnz)); layers validate once and pass
        ``check=False``. Under ``torch.compile`` only shapes and dtypes are checked (traced
        tensors hold no data), so the call compiles with ``fullgraph=True``.

    Returns
    -------
    Tensor, shape (..., m1*m2). Gradients flow to x, A, B, S_values and bias, all computed
    in C++: dx with the transposed kernel, dA/dB from the reshaped products, dS_values as
    the sampled product on S's pattern only. Cost: as ``lpfast.DopedKronecker.__call__``,
    about twice that for the backward.
    """
    if A.dim() == 2:
        A = A.unsqueeze(0)
    if B.dim() == 2:
        B = B.unsqueeze(0)
    if check:
        check_doped_matmul(x, A, B, S_values, S_crow_indices, S_col_indices, bias,
               pattern=not torch.compiler.is_compiling())
    return torch.ops.lpfast.doped_kp_matmul(x, A.contiguous(), B.contiguous(), S_crow_indices,
                                            S_col_indices, S_values, bias)


# -- projective embedding lookup ------------------------------------------------------------

def _lookup_kernel(ids: Tensor, coef: Tensor, bases: Tensor, labels: Tensor) -> Tensor:
    d = bases.shape[2]
    flat = _np(ids).reshape(-1)
    out = torch.empty((flat.shape[0], d), dtype=coef.dtype)
    _core.projective_lookup(coef=_np(coef), labels=_np(labels), bases=_np(bases), ids=flat,
                            out=out.numpy())
    return out.reshape(*ids.shape, d)


@torch.library.custom_op("lpfast::projective_lookup", mutates_args=(), device_types="cpu")
def _lookup(ids: Tensor, coef: Tensor, bases: Tensor, labels: Tensor, padding_idx: int) -> Tensor:
    # padding_idx only matters to the backward; it is an input so that setup_context sees it.
    return _lookup_kernel(ids, coef, bases, labels)


@_lookup.register_fake
def _(ids, coef, bases, labels, padding_idx):
    return coef.new_empty((*ids.shape, bases.shape[2]))


@torch.library.custom_op("lpfast::projective_lookup_backward", mutates_args=(),
                         device_types="cpu")
def _lookup_backward(grad: Tensor, ids: Tensor, coef: Tensor, bases: Tensor, labels: Tensor,
                     padding_idx: int, need_coef: bool, need_bases: bool) -> tuple[Tensor, Tensor]:
    d = bases.shape[2]
    dcoef = torch.empty(coef.shape if need_coef else (0,), dtype=coef.dtype)
    dbases = torch.empty(bases.shape if need_bases else (0,), dtype=bases.dtype)
    if need_coef or need_bases:
        _core.projective_lookup_backward(
            coef=_np(coef), labels=_np(labels), bases=_np(bases), ids=_np(ids).reshape(-1),
            grad=_np(grad).reshape(-1, d), padding_idx=padding_idx,
            dcoef=dcoef.numpy() if need_coef else None,
            dbases=dbases.numpy() if need_bases else None)
    return dcoef, dbases


@_lookup_backward.register_fake
def _(grad, ids, coef, bases, labels, padding_idx, need_coef, need_bases):
    return (coef.new_empty(coef.shape if need_coef else (0,)),
            bases.new_empty(bases.shape if need_bases else (0,)))


def _lookup_setup_context(ctx, inputs, output):
    ids, coef, bases, labels, padding_idx = inputs
    ctx.save_for_backward(ids, coef, bases, labels)
    ctx.padding_idx = padding_idx


def _lookup_autograd_backward(ctx, grad):
    ids, coef, bases, labels = ctx.saved_tensors
    need = ctx.needs_input_grad
    dcoef = dbases = None
    if need[1] or need[2]:
        dcoef, dbases = torch.ops.lpfast.projective_lookup_backward(
            grad.contiguous(), ids, coef, bases, labels, ctx.padding_idx, need[1], need[2])
    return None, dcoef if need[1] else None, dbases if need[2] else None, None, None


_lookup.register_autograd(_lookup_autograd_backward, setup_context=_lookup_setup_context)


def projective_lookup(ids: Tensor, coef: Tensor, bases: Tensor, labels: Tensor,
                      padding_idx: Optional[int] = None, *, check: bool = True) -> Tensor:
    """Differentiable ``coef[ids] @ bases[labels[ids]]``, fused in C++ (CPU tensors).

    Parameters
    ----------
    ids : Tensor of int64 (int32 is converted), any shape (...)
        Row indices in [0, n); an index outside raises ``IndexError`` (checked in C++ on
        every call, also under ``torch.compile``).
    coef : Tensor, shape (n, j), float32 or float64
    bases : Tensor, shape (k, j, d), coef's dtype
    labels : Tensor of int64, shape (n,), values in [0, k) (checked for the rows looked up)
    padding_idx : int in [0, n), optional
        As ``nn.Embedding``: that row of ``coef`` gets no gradient (the bases still do).
    check : bool
        Validate types and shapes (O(1)); layers that hold validated tensors pass False.

    Returns
    -------
    Tensor, shape (..., d). Gradients flow to ``coef`` (a dense (n, j) tensor, duplicate ids
    accumulated in token order) and ``bases``; both are computed in C++ and are bitwise
    the same for any thread count. Cost: ``N*j*d`` multiply-adds for N ids, as
    ``nn.Embedding(n, j)`` + ``nn.Linear(j, d)``; about twice that for the backward.
    """
    if check:
        check_lookup(ids, coef, bases, labels, padding_idx)
    if ids.dtype != torch.int64:
        ids = ids.long()
    if plain_inference(ids, coef, bases, labels):
        # Eager inference calls the kernel directly: the dispatcher and autograd wrapper of
        # a Python custom op cost ~12 us per call, 8% of a 128-token lookup at d = 768.
        return _lookup_kernel(ids, coef, bases, labels)
    pad = -1 if padding_idx is None else int(padding_idx)
    return torch.ops.lpfast.projective_lookup(ids, coef.contiguous(), bases.contiguous(),
                                              labels.contiguous(), pad)
