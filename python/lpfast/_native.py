"""The one unchecked path over the compiled kernels: ``_core``'s functions by keyword.

Every public function validates its arguments in ``_validate`` and then calls the kernels
only through here, each argument named, so that no caller passes a row of bare positional
numbers whose meaning sits in another language. The functions keep ``_core``'s names and
argument names; they add no checks: arrays arrive C-contiguous, of one float dtype, with
the shapes the bindings document (the bindings still refuse what would crash).

The fits pass their arguments to ``_core`` by keyword too, so a renamed binding argument
fails loudly here. The per-call kernels of the layers (products, gradients, lookups) pass
them by position, in the binding's order written out once below: pybind11 matches keywords
against every overload, which cost 2.5-4 us per call against ~0.3 us for this wrapper
(a 2 x 16 float64 product: `python bench/native_overhead.py`).

Internal, made for sharing: the NumPy API, the internal fitters, the torch ops and the
benchmark scripts call these; nothing here is public API.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from . import _core

#: Seeding codes of the k-subspace kernels (``k_subspaces.hpp``), by the names the API uses.
SEEDINGS = {"dp": 0, "random": 1}

Array = np.ndarray


def check_csr(indptr: Array, indices: Array, rows: int, cols: int, name: str = "S") -> None:
    """Raise ValueError (naming ``name``) unless the CSR pattern is well formed."""
    _core.check_csr(indptr=indptr, indices=indices, rows=rows, cols=cols, name=name)


def doped_kron_matmul(x: Array, A: Array, B: Array, indptr: Optional[Array],
                      indices: Optional[Array], data: Optional[Array], bias: Optional[Array],
                      out: Array, check_finite: bool = False) -> None:
    """out = x @ (sum_r kron(A[r], B[r]) + S).T + bias; x (N, n), A (R, m1, n1), B (R, m2, n2)."""
    _core.doped_kron_matmul(x, A, B, indptr, indices, data, bias, out, check_finite)


def sell_layout(indptr: Array, indices: Array, data: Array, cols: int) -> tuple[Array, ...]:
    """(slice_ptr, row_of, indices, data): S in the SELL-16 layout of the batch-1 kernel."""
    return _core.sell_layout(indptr=indptr, indices=indices, data=data, cols=cols)


def sell_kernel(A: Array, Bt: Array, slice_ptr: Array, row_of: Array, indices: Array,
                data: Array, bias: Optional[Array]) -> Any:
    """The compiled batch-1 serving kernel: ``kernel(x, out, check_finite)``."""
    return _core.sell_kernel(A=A, Bt=Bt, slice_ptr=slice_ptr, row_of=row_of, indices=indices,
                             data=data, bias=bias)


def doped_lstm_kernel(layers: list[tuple], dtype: np.dtype) -> Any:
    """The compiled doped LSTM stack of ``doped_lstm.hpp`` over ``layers``, per layer
    ``(A_ih, B_ih, S_ih, A_hh, B_hh, S_hh, bias)`` with S ``(indptr, indices, data)`` (int32
    indices) or None: ``kernel.step(x, h, c, y, h_out, c_out, check_finite)`` and
    ``kernel.sequence(xs, h0, c0, ys, h_n, c_n, check_finite)`` (positional, per call)."""
    cls = _core.DopedLstmF32 if np.dtype(dtype) == np.float32 else _core.DopedLstmF64
    return cls(layers=layers)


def kron_factor_grads(x: Array, dy: Array, A: Array, B: Array, dA: Array, dB: Array) -> None:
    """dA, dB of ``sum(dy * (x @ W.T))`` for the Kronecker part of W (written in place)."""
    _core.kron_factor_grads(x, dy, A, B, dA, dB)


def csr_sampled_product(dy: Array, x: Array, indptr: Array, indices: Array, out: Array) -> None:
    """out[e] = sum over rows of dy[:, row(e)] * x[:, col(e)]: the gradient of S's values."""
    _core.csr_sampled_product(dy, x, indptr, indices, out)


def weighted_pca(X: Array, weights: Optional[Array], k: int) -> Array:
    """Top-k eigenvectors (d, k) of X^T diag(weights) X."""
    return _core.weighted_pca(X=X, weights=weights, k=k)


def subspace_distances(X: Array, basis: Array) -> Array:
    """||x_i - V V^T x_i|| for each row of X, in X's dtype."""
    return _core.subspace_distances(X=X, basis=basis)


def subspace_cost(X: Array, weights: Optional[Array], basis: Array, p: float) -> float:
    """sum_i weights_i * ||x_i - V V^T x_i||^p, summed in float64, in one pass over X."""
    return _core.subspace_cost(X=X, weights=weights, basis=basis, p=p)


def lp_subspace_irls(X: Array, weights: Optional[Array], init: Array, p: float, eps: float,
                     tol: float, max_iter: int,
                     callback: Optional[Callable[[int, float], Any]]) -> tuple[Array, list, int, bool]:
    """IRLS from the orthonormal ``init``: (basis, history, n_iter, converged)."""
    return _core.lp_subspace_irls(X=X, weights=weights, init=init, p=p, eps=eps, tol=tol,
                                  max_iter=max_iter, callback=callback)


def lewis_weights(X: Array, p: float, tol: float, max_iter: int, sketch: bool, seed: int,
                  out: Array) -> dict[str, Any]:
    """Lewis weights into ``out``; returns {"converged", "max_change", ...}."""
    return _core.lewis_weights(X=X, p=p, tol=tol, max_iter=max_iter, sketch=sketch, seed=seed,
                               out=out)


def k_subspaces_assign(X: Array, bases: Array) -> tuple[Array, Array, Array]:
    """(labels, squared distances, coefficients) of each row on its nearest basis."""
    return _core.k_subspaces_assign(X=X, bases=bases)


def k_subspaces_seed(X: Array, weights: Array, n_subspaces: int, dim: int, p: float,
                     seeding: str, seed: int, stream: int) -> Array:
    """Seed bases (k, d, j) by ``seeding`` ("dp" or "random") from RNG stream (seed, stream)."""
    return _core.k_subspaces_seed(X=X, weights=weights, n_subspaces=n_subspaces, dim=dim, p=p,
                                  seeding=SEEDINGS[seeding], seed=seed, stream=stream)


class KSubspacesFit(NamedTuple):
    """What ``k_subspaces_fit`` returns, by name."""

    bases: Array
    labels: Array
    cost: float
    n_iter: int
    history: list
    restart: int
    coefficients: Optional[Array]


def k_subspaces_fit(X: Array, weights: Array, n_subspaces: int, dim: int, p: float,
                    max_iter: int, tol: float, eps: float, irls_steps: int, seeding: str,
                    n_init: int, seed: int, init_bases: Optional[Array] = None,
                    coefficients: bool = False) -> KSubspacesFit:
    """The best of ``n_init`` seeded Lloyd runs (one run from ``init_bases`` when given)."""
    return KSubspacesFit(*_core.k_subspaces_fit(
        X=X, weights=weights, n_subspaces=n_subspaces, dim=dim, p=p, max_iter=max_iter,
        tol=tol, eps=eps, irls_steps=irls_steps, seeding=SEEDINGS[seeding], n_init=n_init,
        seed=seed, init_bases=init_bases, coefficients=coefficients))


def projective_lookup(coef: Array, labels: Array, bases: Array, ids: Array, out: Array) -> None:
    """out[t] = coef[ids[t]] @ bases[labels[ids[t]]] with bases (k, j, d)."""
    _core.projective_lookup(coef, labels, bases, ids, out)


def projective_lookup_backward(coef: Array, labels: Array, bases: Array, ids: Array,
                               grad: Array, padding_idx: int, dcoef: Optional[Array],
                               dbases: Optional[Array]) -> None:
    """Accumulate the lookup's gradients into dcoef / dbases (either may be None)."""
    _core.projective_lookup_backward(coef, labels, bases, ids, grad, padding_idx, dcoef, dbases)
