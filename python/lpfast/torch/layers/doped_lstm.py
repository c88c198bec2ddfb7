"""The doped LSTM (Doping, arXiv 2102.07071): ``torch.nn.LSTM`` whose input and recurrent gate
matrices are each ``W = sum_r kron(A_r, B_r) + S``, S sparse, trained with sparsity annealing
(``annealing.py``) and co-matrix dropout (``cmr=``).

How a training step runs (the choice issue 19 asks to name): each gate matrix is formed
densely once per forward, differentiably (:meth:`DopedKroneckerLinear.effective_weight`: the
Kronecker sum, plus S's masked values scattered in, with CMR dropout on them in training
mode), and the whole sequence then runs in torch's fused LSTM (``torch.lstm``, the kernel
``torch.nn.LSTM`` calls), so there is no Python work per time step and gradients reach A, B,
S's values and the biases through torch's own LSTM backward. Forming the weights costs
O(R * 4H * (I + H) + nnz) per layer and step, plus CMR's mask over S's stored entries.
Measured (``python bench/bench_lstm_train.py --steps 15``: 2 layers, hidden 256 and 650,
seq 35, batch 20, SGD, CMR 0.3, one thread, process CPU time, steps interleaved with
``torch.nn.LSTM``'s of the same size): 1.09-1.12x nn.LSTM's step at density 0.01 (where
annealing ends), 1.5-1.6x at density 1 (where it starts: millions of stored entries to
drop and scatter each step).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ... import DopedLSTMRuntime, kron_factor_shapes
from ..._validate import as_factor_shapes, as_float, as_int, as_shape2
from .._checks import check_module, layer_dtype
from .kron import DopedKroneckerLinear

__all__ = ["DopedLSTM"]


def _matrix_names(num_layers: int) -> list[str]:
    return [f"{kind}{layer}" for layer in range(num_layers) for kind in ("ih", "hh")]


def _pick(spec: Any, name: str, arg: str, names: list[str]) -> Any:
    """The entry of a per-matrix ``spec`` (a dict keyed by matrix name) or the one value."""
    if not isinstance(spec, dict):
        return spec
    unknown = sorted(set(spec) - set(names))
    if unknown:
        msg = f"{arg}: unknown gate matrices {unknown}; this LSTM's are {names}"
        raise ValueError(msg)
    return spec.get(name)


def _complement(shape: tuple[int, int], given: Any, arg: str, name: str) -> tuple[int, int]:
    """The other factor's shape when only one of a_shape/b_shape is given."""
    r, c = as_shape2(given, arg)
    if r < 1 or c < 1 or shape[0] % r or shape[1] % c:
        msg = (f"{arg}={tuple(given)} does not tile the gate matrix {name} of shape {shape}: "
               f"its rows and columns must divide {shape}")
        raise ValueError(msg)
    return shape[0] // r, shape[1] // c


def _factor_shapes(shape: tuple[int, int], a_shape: Any, b_shape: Any, name: str,
                   auto: bool) -> tuple[Any, Any]:
    """(a_shape, b_shape) of gate matrix ``name``; (None, None) when neither is given and
    ``auto`` is False (the caller's fit chooses)."""
    if a_shape is None and b_shape is None:
        return kron_factor_shapes(*shape)[0] if auto else (None, None)
    if b_shape is None:
        b_shape = _complement(shape, a_shape, "a_shape", name)
    elif a_shape is None:
        a_shape = _complement(shape, b_shape, "b_shape", name)
    return as_factor_shapes(shape, a_shape, b_shape, f"the gate matrix {name}")


class DopedLSTM(nn.Module):
    """``torch.nn.LSTM`` with doped Kronecker gate matrices: each ``weight_ih_l{k}`` (4H, I_k)
    and ``weight_hh_l{k}`` (4H, H) is ``W = sum_r kron(A[r], B[r]) + S``, S sparse (CSR).

    Gate order and math are ``torch.nn.LSTM``'s (rows [i, f, g, o]; c' = f*c + i*g,
    h' = o*tanh(c')); each sequence runs in torch's fused LSTM with the gate matrices formed
    once per forward (module docstring). Unidirectional, no projection.

    Parameters
    ----------
    input_size, hidden_size : int >= 1
        I and H.
    num_layers : int >= 1
    bias : bool
        ``b_ih`` and ``b_hh`` per layer, as torch.nn.LSTM.
    batch_first : bool
        Input and output (batch, T, features) instead of (T, batch, features); the states
        stay (num_layers, batch, H), as torch.nn.LSTM.
    dropout : float in [0, 1)
        Dropout on the outputs of every layer but the last, in training mode.
    a_shape, b_shape : (m1, n1), (m2, n2), or dict of them keyed "ih0", "hh0", "ih1", ...
        Factor shapes per gate matrix (np.kron convention: m1*m2 = 4H, n1*n2 = the matrix's
        columns). One pair applies to every matrix (it must tile them all); a dict gives
        some matrices theirs. Only one of the two given: the other is what tiles the
        matrix. Neither: ``lpfast.kron_factor_shapes``'s first (fewest parameters).
    rank : int >= 1
        Kronecker rank R of every matrix.
    density : float in [0, 1]
        Fraction of each gate matrix stored in S, on a random pattern (torch's RNG) with
        zero values: the layer starts as a plain Kronecker LSTM. To anneal, start high
        (0.5-1.0) and let :class:`~lpfast.torch.SparsityAnnealer` prune.
    cmr : float in [0, 1)
        Co-matrix dropout on S's values in training mode (:func:`co_matrix_dropout`).
    dtype : torch.float32 or torch.float64; device : CPU only
    bidirectional, proj_size : only their defaults (False, 0); anything else is refused by
        name, so an ``nn.LSTM`` call that asks for them fails instead of running otherwise.

    Attributes
    ----------
    ih0, hh0, ih1, hh1, ... : DopedKroneckerLinear
        The gate matrices with their biases (``b_ih``, ``b_hh``): A (R, m1, n1), B
        (R, m2, n2), S as ``S_values`` + CSR buffers + ``S_mask`` while annealing. Their
        own forward is not used; their ``prune_`` / ``compact_`` are.

    Notes
    -----
    Cost per forward: the fused LSTM's (O(T * batch * 4H * (I + H)) per layer) plus
    O(R * 4H * (I + H) + nnz) per layer to form the weights. Inputs with NaN or Inf are
    refused (ValueError). For serving, :meth:`runtime` gives the C++ step.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 a_shape: Any = None, b_shape: Any = None, rank: int = 1,
                 density: float = 0.01, cmr: float = 0.0, dtype: Optional[torch.dtype] = None,
                 device: Any = None, bidirectional: bool = False, proj_size: int = 0):
        super().__init__()
        if bidirectional:
            msg = "bidirectional: DopedLSTM runs one direction only (bidirectional=True is not supported)"
            raise ValueError(msg)
        if proj_size:
            msg = f"proj_size: DopedLSTM has no projection (proj_size must be 0, got {proj_size})"
            raise ValueError(msg)
        self.input_size = as_int(input_size, "input_size", low=1)
        self.hidden_size = H = as_int(hidden_size, "hidden_size", low=1)
        self.num_layers = as_int(num_layers, "num_layers", low=1)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = as_float(dropout, "dropout", low=0.0, high=1.0)
        if self.dropout >= 1:
            msg = f"dropout: expected a probability in [0, 1), got {dropout}"
            raise ValueError(msg)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout: DopedLSTM drops the outputs of all layers but the last, as "
                          f"torch.nn.LSTM; with num_layers=1 dropout={self.dropout} does nothing",
                          stacklevel=2)
        rank = as_int(rank, "rank", low=1)
        dtype = layer_dtype(dtype, device)
        names = _matrix_names(self.num_layers)
        k = 1.0 / math.sqrt(H)
        # torch.nn.LSTM draws every weight from U(-k, k), Var k^2 / 3; the Kronecker sum
        # gets that variance with Var(a) = Var(b) = k / sqrt(3 R).
        bound = math.sqrt(3.0 * k / math.sqrt(3.0 * rank))
        for name in names:
            shape = self._matrix_shape(name)
            a, b = _factor_shapes(shape, _pick(a_shape, name, "a_shape", names),
                                  _pick(b_shape, name, "b_shape", names), name, auto=True)
            m = DopedKroneckerLinear(shape[1], shape[0], a, b, density, rank, bias=self.bias,
                                     cmr=cmr, dtype=dtype)
            with torch.no_grad():
                m.A.uniform_(-bound, bound)
                m.B.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.uniform_(-k, k)
            self.add_module(name, m)

    def _matrix_shape(self, name: str) -> tuple[int, int]:
        layer = int(name[2:])
        cols = self.input_size if name.startswith("ih") and layer == 0 else self.hidden_size
        return 4 * self.hidden_size, cols

    def matrices(self) -> Iterator[tuple[str, DopedKroneckerLinear]]:
        """(name, gate matrix) in torch's order: ih0, hh0, ih1, hh1, ..."""
        for name in _matrix_names(self.num_layers):
            yield name, getattr(self, name)

    # -- forward -----------------------------------------------------------------------------
    def _flat_weights(self) -> list[Tensor]:
        """nn.LSTM's ``_flat_weights`` order: per layer w_ih, w_hh (, b_ih, b_hh)."""
        flat = []
        for layer in range(self.num_layers):
            ih, hh = getattr(self, f"ih{layer}"), getattr(self, f"hh{layer}")
            flat += [ih.effective_weight(), hh.effective_weight()]
            if self.bias:
                flat += [ih.bias, hh.bias]
        return flat

    def _check_input(self, input: Any) -> None:
        if isinstance(input, nn.utils.rnn.PackedSequence):
            msg = "input: PackedSequence is not supported by DopedLSTM; pass a padded tensor"
            raise TypeError(msg)
        self._check_tensor("input", input)
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            order = "(batch, T, I)" if self.batch_first else "(T, batch, I)"
            msg = (f"input: expected shape {order} or (T, I) with I = input_size = "
                   f"{self.input_size}, got {tuple(input.shape)}")
            raise ValueError(msg)

    def _check_tensor(self, name: str, t: Any) -> None:
        dtype = self.ih0.A.dtype
        if not isinstance(t, Tensor):
            msg = f"{name}: expected a torch.Tensor, got {type(t).__name__}"
            raise TypeError(msg)
        if t.dtype != dtype:
            msg = f"{name}: expected dtype {dtype} (the layer's), got {t.dtype}"
            raise TypeError(msg)
        if t.device.type != "cpu":
            msg = f"{name}: DopedLSTM runs on CPU, got device {t.device}"
            raise ValueError(msg)
        if not bool(torch.isfinite(t).all()):
            msg = f"{name}: contains NaN or Inf"
            raise ValueError(msg)

    def _check_state(self, hx: Any, batch: Optional[int]) -> tuple[Tensor, Tensor]:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            msg = f"hx: expected a pair (h_0, c_0), got {type(hx).__name__}"
            raise TypeError(msg)
        want = ((self.num_layers, self.hidden_size) if batch is None
                else (self.num_layers, batch, self.hidden_size))
        for name, t in zip(("hx[0] (h_0)", "hx[1] (c_0)"), hx):
            self._check_tensor(name, t)
            if tuple(t.shape) != want:
                what = ("(num_layers, hidden_size)" if batch is None
                        else "(num_layers, batch, hidden_size)")
                msg = f"{name}: expected shape {what} = {want}, got {tuple(t.shape)}"
                raise ValueError(msg)
        h, c = hx
        return (h, c) if batch is not None else (h.unsqueeze(1), c.unsqueeze(1))

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """torch.nn.LSTM's forward.

        Parameters
        ----------
        input : Tensor, (T, batch, I), (batch, T, I) with ``batch_first``, or (T, I)
        hx : (h_0, c_0), each (num_layers, batch, H) ((num_layers, H) for 2-d input), or None
            for zeros.

        Returns
        -------
        output : Tensor, the input's layout with H features: the top layer's h at each step
        (h_n, c_n) : each (num_layers, batch, H) (or (num_layers, H))
        """
        self._check_input(input)
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        batch = input.shape[batch_dim]
        if hx is None:
            zeros = torch.zeros(self.num_layers, batch, self.hidden_size, dtype=input.dtype)
            hx = (zeros, zeros)
        else:
            hx = self._check_state(hx, batch if batched else None)
        out, h, c = torch.lstm(input, hx, self._flat_weights(), self.bias, self.num_layers,
                               self.dropout, self.training, False, self.batch_first)
        if not batched:
            return out.squeeze(batch_dim), (h.squeeze(1), c.squeeze(1))
        return out, (h, c)

    # -- structure and accounting ------------------------------------------------------------
    @property
    def cmr(self) -> float:
        """Co-matrix dropout probability of S's values (all gate matrices); settable, e.g.
        to 0 once annealing is over."""
        return self.ih0.cmr

    @cmr.setter
    def cmr(self, p: float) -> None:
        p = as_float(p, "cmr", low=0.0)
        if p >= 1:
            msg = f"cmr: expected a dropout probability in [0, 1), got {p}"
            raise ValueError(msg)
        for _, m in self.matrices():
            m.cmr = p

    @property
    def nnz(self) -> int:
        """Entries of S that count, summed over the gate matrices."""
        return sum(m.nnz for _, m in self.matrices())

    @property
    def density(self) -> float:
        """``nnz`` over the entries of all gate matrices."""
        size = sum(m.out_features * m.in_features for _, m in self.matrices())
        return self.nnz / size

    @property
    def n_params(self) -> int:
        """Learnable values stored: per gate matrix R*(m1*n1 + m2*n2) + nnz (+ 4H bias)."""
        return sum(m.n_params for _, m in self.matrices())

    @property
    def n_indices(self) -> int:
        """S's index entries once compacted (CSR): one column index per non-zero plus
        4H + 1 row pointers per gate matrix that has non-zeros (none without)."""
        return sum(m.nnz + m.out_features + 1 for _, m in self.matrices() if m.nnz)

    @property
    def stored_bytes(self) -> int:
        """Bytes to store the compacted layer: ``n_params`` values in the layer's dtype and
        ``n_indices`` int32 indices (what ``lpfast.DopedKronecker`` holds as CSR, without
        its serving copies)."""
        return self.n_params * self.ih0.A.element_size() + 4 * self.n_indices

    def dense_weights(self) -> dict[str, Tensor]:
        """The dense parameters under torch.nn.LSTM's names (``weight_ih_l0``,
        ``weight_hh_l0``, ``bias_ih_l0``, ...), detached, S masked, no dropout: an
        ``nn.LSTM`` of the same sizes loads it (:meth:`to_lstm`)."""
        out = {}
        for name, m in self.matrices():
            kind, layer = name[:2], name[2:]
            out[f"weight_{kind}_l{layer}"] = m.dense_weight()
            if m.bias is not None:
                out[f"bias_{kind}_l{layer}"] = m.bias.detach().clone()
        return out

    def to_lstm(self) -> nn.LSTM:
        """A ``torch.nn.LSTM`` holding :meth:`dense_weights` (same sizes, dropout, layout)."""
        lstm = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
                       batch_first=self.batch_first, dropout=self.dropout,
                       dtype=self.ih0.A.dtype)
        lstm.load_state_dict(self.dense_weights())
        return lstm.train(self.training)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout}, "
                f"rank={self.ih0.rank}, nnz={self.nnz}, cmr={self.cmr}")

    def runtime(self, check_finite: bool = True) -> DopedLSTMRuntime:
        """The layer, as it is now, as an immutable ``lpfast.DopedLSTMRuntime``: inference in
        C++ (one call per step or per sequence, GIL released, state kept by the caller).

        Each gate matrix becomes an ``lpfast.DopedKronecker`` (masked entries of S dropped,
        no bias) and each layer's bias ``b_ih + b_hh`` (None without biases); no dropout,
        as in eval mode. The runtime reads batch-first sequences, whatever ``batch_first``
        says here. Later training does not reach it: call ``runtime()`` again.

        Returns
        -------
        lpfast.DopedLSTMRuntime, the layer's dtype. Cost: O(nnz + R * (m1*n1 + m2*n2)) per
        gate matrix, plus the runtime's layout.
        """
        layers = []
        with torch.no_grad():
            for layer in range(self.num_layers):
                ih, hh = getattr(self, f"ih{layer}"), getattr(self, f"hh{layer}")
                bias = (ih.bias + hh.bias).numpy() if self.bias else None
                layers.append((ih.to_operator(check_finite, bias=False),
                               hh.to_operator(check_finite, bias=False), bias))
        return DopedLSTMRuntime(layers, check_finite=check_finite)

    # -- annealing ---------------------------------------------------------------------------
    @torch.no_grad()
    def prune_(self, density: float) -> int:
        """:meth:`DopedKroneckerLinear.prune_` on every gate matrix: each keeps its
        ``round(density * 4H * cols)`` largest-magnitude entries of S (masked, never
        regrown). Returns the entries of S that count afterwards, summed."""
        density = as_float(density, "density", low=0.0, high=1.0)
        return sum(m.prune_(density) for _, m in self.matrices())

    @torch.no_grad()
    def compact_(self) -> DopedLSTM:
        """Drop the masked entries of every gate matrix (new ``S_values`` Parameters:
        rebuild the optimizer afterwards). Returns self."""
        for _, m in self.matrices():
            m.compact_()
        return self

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, *, a_shape: Any = None, b_shape: Any = None,
                  rank: int = 1, density: float = 0.01, ratio: Optional[float] = None,
                  n_iter: int = 3, cmr: float = 0.0) -> DopedLSTM:
        """Initialise from a trained ``torch.nn.LSTM``: each gate matrix fitted by
        ``lpfast.doped_kp_fit`` (as :meth:`DopedKroneckerLinear.from_linear`), biases copied.

        Parameters
        ----------
        lstm : torch.nn.LSTM, float32 or float64, CPU, unidirectional, no projection
        a_shape, b_shape : pair or dict keyed "ih0", "hh0", ..., optional
            As in the constructor; a matrix given neither gets the best-fitting of the
            shapes ``doped_kp_fit`` tries (``fit_info[name]["candidates"]``).
        rank : int >= 1
            Lowered per matrix where its factor shapes allow less.
        density : float in [0, 1]
            Fraction of each matrix stored in S (ignored when ``ratio`` is given).
        ratio : float > 1, optional
            Instead of ``density``: each matrix's compression ratio (doped_kp_fit's).
        n_iter : int >= 0
        cmr : float in [0, 1)

        Returns
        -------
        DopedLSTM with the LSTM's sizes, ``batch_first``, ``dropout`` and dtype, and
        ``fit_info``: {matrix name: that matrix's doped_kp_fit info}.
        Cost: one doped_kp_fit per gate matrix.
        """
        check_module(lstm, nn.LSTM, "lstm")
        if lstm.bidirectional or lstm.proj_size:
            msg = "lstm: bidirectional LSTMs and LSTMs with proj_size > 0 are not supported"
            raise ValueError(msg)
        dtype = lstm.weight_ih_l0.dtype
        new = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, bias=lstm.bias,
                  batch_first=lstm.batch_first, dropout=lstm.dropout, a_shape=a_shape,
                  b_shape=b_shape, rank=1, density=0.0, cmr=cmr, dtype=dtype)
        names = _matrix_names(new.num_layers)
        new.fit_info = {}
        for name in names:
            kind, layer = name[:2], name[2:]
            weight = getattr(lstm, f"weight_{kind}_l{layer}")
            bias = getattr(lstm, f"bias_{kind}_l{layer}") if lstm.bias else None
            a, b = _factor_shapes(tuple(weight.shape), _pick(a_shape, name, "a_shape", names),
                                  _pick(b_shape, name, "b_shape", names), name, auto=False)
            fitted = DopedKroneckerLinear._fit(weight, bias, a, b, density, rank, ratio=ratio,
                                               n_iter=n_iter, cmr=cmr,
                                               name=f"lstm.weight_{kind}_l{layer}")
            new.fit_info[name] = fitted.__dict__.pop("fit_info")
            setattr(new, name, fitted)
        return new.train(lstm.training)
