"""Randomly initialised doped-Kronecker LSTM stacks with the structure of the Doping paper's
language model (arXiv 2102.07071: 2 layers, input 650, hidden 650), at a given compression
of the LSTM weights, plus the dense ``torch.nn.LSTM`` computing the same function.
Latency depends only on shapes and density, so random values stand in for trained ones.

How stored parameters are counted (one unit = one 32-bit value):

* a dense gate matrix (4H, I): 4H * I units (biases are left out on both sides: they are
  stored densely by every variant);
* a doped one: its Kronecker factors R (m1 n1 + m2 n2), plus per non-zero of S one value
  and one 32-bit column index (2 units), plus S's row pointer (4H + 1 units), i.e. CSR
  with int32 indices as it is stored. ``compression = dense units / doped units`` per
  gate matrix; the non-zeros are the most this budget allows.

Factor shapes are ``lpfast.kron_factor_shapes(4H, I)[0]`` (rank 1); S's pattern is uniform
random.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

import lpfast
import lpfast.reference

INDEX_UNITS = 1.0  # a 32-bit index costs one 32-bit value


def doped_units(m: int, n: int, a_shape, b_shape, rank: int, nnz: int) -> float:
    """Stored units of a doped Kronecker gate matrix (see the module docstring)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    return rank * (m1 * n1 + m2 * n2) + nnz * (1.0 + INDEX_UNITS) + INDEX_UNITS * (m + 1)


def nnz_for(m: int, n: int, compression: float, a_shape, b_shape, rank: int = 1) -> int:
    """The most non-zeros a (m, n) doped gate matrix may hold at ``compression``."""
    budget = m * n / compression - doped_units(m, n, a_shape, b_shape, rank, 0)
    if budget < 0:
        msg = f"compression {compression} leaves no room for the Kronecker factors of ({m}, {n})"
        raise ValueError(msg)
    return int(budget // (1.0 + INDEX_UNITS))


def _doped(rng, m: int, n: int, compression: float, dtype) -> lpfast.DopedKronecker:
    a_shape, b_shape = lpfast.kron_factor_shapes(m, n)[0]
    nnz = nnz_for(m, n, compression, a_shape, b_shape)
    # Entries ~ N(0, 0.5 / sqrt(n)) for kron(A, B) and for S: pre-activations of order 1.
    scale = 0.5 / np.sqrt(n)
    A = scale * rng.standard_normal((1, *a_shape))
    B = rng.standard_normal((1, *b_shape))
    S = sp.random(m, n, density=nnz / (m * n), format="csr", rng=rng,
                  data_rvs=lambda k: scale * rng.standard_normal(k))
    return lpfast.DopedKronecker(A.astype(dtype), B.astype(dtype), S.astype(dtype))


@dataclass
class PaperModel:
    runtime: lpfast.DopedLSTMRuntime
    dense: list            # per layer (W_ih, W_hh, bias), float64 arrays of the same function
    compression: float     # dense units / doped units over all gate matrices
    nnz: int


def paper_model(compression: float, *, input_size: int = 650, hidden: int = 650,
                num_layers: int = 2, dtype=np.float32, seed: int = 0) -> PaperModel:
    rng = np.random.default_rng(seed)
    layers, dense = [], []
    dense_units = doped = 0.0
    for li in range(num_layers):
        n_in = input_size if li == 0 else hidden
        ih = _doped(rng, 4 * hidden, n_in, compression, dtype)
        hh = _doped(rng, 4 * hidden, hidden, compression, dtype)
        bias = (0.1 * rng.standard_normal(4 * hidden)).astype(dtype)
        layers.append((ih, hh, bias))
        dense.append((ih.to_dense().astype(np.float64), hh.to_dense().astype(np.float64),
                      bias.astype(np.float64)))
        for op in (ih, hh):
            dense_units += op.shape[0] * op.shape[1]
            doped += doped_units(*op.shape, op.a_shape, op.b_shape, op.rank, op.nnz)
    rt = lpfast.DopedLSTMRuntime(layers)
    return PaperModel(rt, dense, dense_units / doped, sum(ih.nnz + hh.nnz for ih, hh, _ in layers))


def torch_lstm(model: PaperModel):
    """``torch.nn.LSTM`` (float32, eval) holding the dense W of ``model`` (b_hh = 0)."""
    import torch

    rt = model.runtime
    lstm = torch.nn.LSTM(rt.input_size, rt.hidden_size, rt.num_layers)
    with torch.no_grad():
        for li, (W_ih, W_hh, bias) in enumerate(model.dense):
            getattr(lstm, f"weight_ih_l{li}").copy_(torch.from_numpy(W_ih))
            getattr(lstm, f"weight_hh_l{li}").copy_(torch.from_numpy(W_hh))
            getattr(lstm, f"bias_ih_l{li}").copy_(torch.from_numpy(bias))
            getattr(lstm, f"bias_hh_l{li}").zero_()
    return lstm.to(getattr(torch, str(rt.dtype))).eval()


@contextmanager
def mkldnn_enabled(enabled: bool):
    """torch's CPU LSTM through oneDNN (its default) or through torch's own kernels.
    (``torch.backends.mkldnn.flags`` would do it too, but warns about TF32 on every entry.)"""
    import torch

    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def step_inputs(model: PaperModel, batch: int, seed: int = 1):
    """x (batch, I), h, c (num_layers, batch, H) of the runtime's dtype."""
    rt = model.runtime
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, rt.input_size)).astype(rt.dtype)
    h = (0.5 * rng.standard_normal((rt.num_layers, batch, rt.hidden_size))).astype(rt.dtype)
    c = rng.standard_normal((rt.num_layers, batch, rt.hidden_size)).astype(rt.dtype)
    return x, h, c


def expected_step(model: PaperModel, x, h, c):
    """(y, h_new, c_new) of one step in float64 (lpfast.reference, dense W)."""
    ys, (hn, cn) = lpfast.reference.doped_lstm_forward(
        x[:, None].astype(np.float64), model.dense, h.astype(np.float64), c.astype(np.float64))
    return ys[:, 0], hn, cn
