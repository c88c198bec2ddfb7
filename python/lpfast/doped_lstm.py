"""Fast CPU inference of an LSTM stack whose gate matrices are doped Kronecker operators.

:class:`DopedLSTMRuntime` runs all gates of all layers of such an LSTM (the Doping paper's
model, arXiv 2102.07071) in one compiled call per step or per sequence, GIL released,
with the state ``(h, c)`` kept by the caller: the serving side of
``lpfast.torch.DopedLSTM`` (whose ``runtime()`` builds one), usable with NumPy alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import _native
from ._validate import as_float_array, float_dtype_of
from .kron import DopedKronecker

__all__ = ["DopedLSTMRuntime"]

_INT32_MAX = int(np.iinfo(np.int32).max)


def _csr_int32(op: DopedKronecker, name: str) -> tuple[np.ndarray, ...] | None:
    """The operator's CSR arrays with int32 indices (the kernel's), or None without S."""
    S = op._S  # noqa: SLF001 - the operator's own checked, read-only arrays
    if S is None:
        return None
    indptr, indices, data = S
    if indptr.dtype != np.int32:
        if max(op.shape[1], indices.size) > _INT32_MAX:
            msg = f"{name}: S is too large for 32-bit indices"
            raise ValueError(msg)
        indptr, indices = indptr.astype(np.int32), indices.astype(np.int32)
    return indptr, indices, data


def _check_finite_op(op: DopedKronecker, name: str) -> None:
    parts = {"A": op.A, "B": op.B}
    if op._S is not None:  # noqa: SLF001
        parts["S.data"] = op._S[2]  # noqa: SLF001
    for part, a in parts.items():
        if a.size and not np.isfinite(a).all():
            msg = f"{name}.{part}: contains NaN or Inf (pass check_finite=False to skip this check)"
            raise ValueError(msg)


def _as_layers(layers: Any, check_finite: bool):
    """Validated ``((ih, hh, bias), ...)``, the dtype, input size and hidden size."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        msg = f"layers: expected a sequence of (ih, hh, bias) tuples, got {type(layers).__name__}"
        raise TypeError(msg)
    if len(layers) == 0:
        msg = "layers: at least one layer is required"
        raise ValueError(msg)
    out = []
    dtype = hidden = input_size = None
    for li, entry in enumerate(layers):
        at = f"layers[{li}]"
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            msg = f"{at}: expected a tuple (ih, hh, bias)"
            raise TypeError(msg)
        ih, hh, bias = entry
        for op, which in ((ih, "ih"), (hh, "hh")):
            if not isinstance(op, DopedKronecker):
                msg = f"{at}.{which}: expected an lpfast.DopedKronecker, got {type(op).__name__}"
                raise TypeError(msg)
            if op.bias is not None:
                msg = (f"{at}.{which}: the operator holds a bias; build it without one and pass "
                       f"b_ih + b_hh as the layer's bias")
                raise ValueError(msg)
            if dtype is None:
                dtype = op.dtype
            elif op.dtype != dtype:
                msg = f"{at}.{which}: dtype {op.dtype} does not match layers[0].ih's {dtype}"
                raise TypeError(msg)
            if check_finite:
                _check_finite_op(op, f"{at}.{which}")
        m, n = hh.shape
        if hidden is None:
            if m % 4 != 0 or m != 4 * n:
                msg = (f"{at}.hh: shape {hh.shape} (kron of A {hh.a_shape} and B {hh.b_shape}); "
                       f"expected (4 * hidden_size, hidden_size)")
                raise ValueError(msg)
            hidden, input_size = n, ih.shape[1]
        want = {"ih": (4 * hidden, input_size if li == 0 else hidden), "hh": (4 * hidden, hidden)}
        for op, which in ((ih, "ih"), (hh, "hh")):
            if op.shape != want[which]:
                msg = (f"{at}.{which}: kron(A {op.a_shape}, B {op.b_shape}) has shape {op.shape}, "
                       f"which does not tile the gate matrix {want[which]} (hidden_size "
                       f"{hidden}{', input_size ' + str(input_size) if li == 0 else ''})")
                raise ValueError(msg)
        if bias is not None:
            own = float_dtype_of(bias, f"{at}.bias")
            if own is not None and own != dtype:
                msg = f"{at}.bias: dtype {own} does not match the operators' {dtype}"
                raise TypeError(msg)
            bias = as_float_array(bias, f"{at}.bias", dtype, ndim=1, check_finite=check_finite)
            if bias.shape != (4 * hidden,):
                msg = f"{at}.bias: expected shape ({4 * hidden},) = b_ih + b_hh, got {bias.shape}"
                raise ValueError(msg)
            bias = bias.copy()
            bias.flags.writeable = False
        out.append((ih, hh, bias))
    return tuple(out), np.dtype(dtype), int(input_size), int(hidden)


class DopedLSTMRuntime:
    """Inference of a multi-layer LSTM with doped Kronecker gate matrices.

    Gate order and math are ``torch.nn.LSTM``'s: rows of ``W_ih`` (4H, I) and ``W_hh``
    (4H, H) are ``[i, f, g, o]``; ``i, f, o = sigmoid``, ``g = tanh``;
    ``c' = f * c + i * g``; ``h' = o * tanh(c')``; each layer feeds its ``h'`` to the next.
    Each gate matrix is ``W = sum_r kron(A[r], B[r]) + S`` (an :class:`lpfast.DopedKronecker`).

    Parameters
    ----------
    layers : sequence of (ih, hh, bias)
        One entry per layer: ``ih`` a ``DopedKronecker`` of shape (4H, I_l) (I_0 the input
        size, I_l = H above), ``hh`` one of shape (4H, H), neither holding a bias, and
        ``bias`` an array (4H,) = ``b_ih + b_hh`` (or None for no bias). One dtype,
        float32 or float64, for all.
    check_finite : bool
        Refuse NaN/Inf in the parameters (once, here) and in inputs and states (per call,
        in C++).

    The runtime is immutable and holds no state between calls, so one instance may serve
    several threads at once. Cost per step and batch row: the Kronecker GEMMs
    (2 R n1 m2 (n2 + m1) flops per gate matrix) plus one multiply-add per non-zero of each
    S, plus ~5H activations per layer; calls release the GIL and split the batch over
    ``lpfast.get_num_threads()`` threads when it is large enough.
    """

    __slots__ = ("_layers", "_kernel", "_dtype", "_input_size", "_hidden_size", "check_finite")

    def __init__(self, layers: Any, *, check_finite: bool = True):
        self._layers, self._dtype, self._input_size, self._hidden_size = _as_layers(
            layers, check_finite)
        spec = []
        for li, (ih, hh, bias) in enumerate(self._layers):
            spec.append((ih.A, ih.B, _csr_int32(ih, f"layers[{li}].ih"),
                         hh.A, hh.B, _csr_int32(hh, f"layers[{li}].hh"), bias))
        self._kernel = _native.doped_lstm_kernel(spec, self._dtype)
        self.check_finite = bool(check_finite)

    # -- structure -------------------------------------------------------------------------
    @property
    def layers(self) -> tuple:
        """The ``(ih, hh, bias)`` entries, as validated (operators shared, bias read-only)."""
        return self._layers

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def input_size(self) -> int:
        """I_0, the width of x."""
        return self._input_size

    @property
    def hidden_size(self) -> int:
        """H, the width of h and c."""
        return self._hidden_size

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def n_params(self) -> int:
        """Stored values: every operator's ``n_params`` (factors + non-zeros) plus the biases."""
        return sum(ih.n_params + hh.n_params + (0 if b is None else b.size)
                   for ih, hh, b in self._layers)

    @property
    def nbytes(self) -> int:
        """Bytes held: the operators (with their serving copies), the biases, and the
        compiled kernel's own layouts (B transposed, S in SELL-16)."""
        ops = sum(ih.nbytes + hh.nbytes + (0 if b is None else b.nbytes)
                  for ih, hh, b in self._layers)
        return ops + int(self._kernel.nbytes)

    def __repr__(self) -> str:
        nnz = sum(ih.nnz + hh.nnz for ih, hh, _ in self._layers)
        return (f"DopedLSTMRuntime(num_layers={self.num_layers}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, dtype={self.dtype}, nnz={nnz})")

    # -- inputs ----------------------------------------------------------------------------
    def _array(self, a: Any, name: str, shape: tuple[int, ...] | None, ndim: int) -> np.ndarray:
        # Fast path for what a server passes every call: an exact, C-contiguous array.
        if not (type(a) is np.ndarray and a.dtype == self._dtype and a.flags.c_contiguous):
            if hasattr(a, "detach") and hasattr(a, "numpy"):
                a = a.detach().cpu().numpy()
            a = np.asarray(a)
            if a.dtype.kind == "f" and a.dtype != self._dtype:
                msg = (f"{name}: dtype {a.dtype} does not match the runtime's {self._dtype}; "
                       f"convert it explicitly")
                raise TypeError(msg)
            a = as_float_array(a, name, self._dtype, check_finite=False)
        if shape is not None and a.shape != shape:
            msg = f"{name}: expected shape {shape}, got {a.shape}"
            raise ValueError(msg)
        return a

    def _inputs(self, x: Any, name: str, ndim: int) -> np.ndarray:
        a = self._array(x, name, None, ndim)
        if a.ndim != ndim or a.shape[-1] != self._input_size:
            lead = "batch" if ndim == 2 else "batch, steps"
            msg = f"{name}: expected shape ({lead}, {self._input_size}), got {a.shape}"
            raise ValueError(msg)
        return a

    def _state_shape(self, batch: int) -> tuple[int, int, int]:
        return (len(self._layers), batch, self._hidden_size)

    # -- inference -------------------------------------------------------------------------
    def step(self, x: Any, h: Any, c: Any, *,
             out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        """One time step of every layer.

        Parameters
        ----------
        x : array_like, shape (batch, input_size), the runtime's dtype
        h, c : array_like, shape (num_layers, batch, hidden_size)
            The state before the step; not modified (unless passed as ``out``).
        out : (y, h_new, c_new), optional
            C-contiguous destinations of the runtime's dtype and the shapes below; ``h_new``
            may be ``h`` itself and ``c_new`` ``c`` itself (an in-place state update), other
            overlaps are refused.

        Returns
        -------
        y : ndarray, shape (batch, hidden_size)
            The top layer's new h (equal to ``h_new[-1]``).
        h_new, c_new : ndarray, shape (num_layers, batch, hidden_size)

        One compiled call (GIL released). Cost: see the class docstring, for one step.
        """
        x = self._inputs(x, "x", 2)
        shape = self._state_shape(x.shape[0])
        h = self._array(h, "h", shape, 3)
        c = self._array(c, "c", shape, 3)
        if out is None:
            y = np.empty((x.shape[0], self._hidden_size), self._dtype)
            h_new, c_new = np.empty(shape, self._dtype), np.empty(shape, self._dtype)
        else:
            y, h_new, c_new = self._outputs(out, x, h, c, shape)
        self._kernel.step(x, h, c, y, h_new, c_new, self.check_finite)
        return y, h_new, c_new

    def _outputs(self, out: Any, x: np.ndarray, h: np.ndarray, c: np.ndarray, shape):
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            msg = "out: expected a tuple (y, h_new, c_new)"
            raise TypeError(msg)
        want = ((x.shape[0], self._hidden_size), shape, shape)
        for a, name, s in zip(out, ("out[0] (y)", "out[1] (h_new)", "out[2] (c_new)"), want):
            if not (isinstance(a, np.ndarray) and a.dtype == self._dtype and a.flags.c_contiguous):
                msg = f"{name}: expected a C-contiguous numpy array of dtype {self._dtype}"
                raise TypeError(msg)
            if a.shape != s:
                msg = f"{name}: expected shape {s}, got {a.shape}"
                raise ValueError(msg)
            if not a.flags.writeable:
                msg = f"{name}: array is read-only"
                raise ValueError(msg)
        y, h_new, c_new = out
        allowed = {(1, 1), (2, 2)}  # h_new may be h, c_new may be c: the kernel updates in place
        srcs = (x, h, c)
        for i, a in enumerate(out):
            for j, b in enumerate(srcs):
                if (i, j) in allowed and a is b:
                    continue
                if np.may_share_memory(a, b):
                    msg = "out: must not overlap x, h or c (except h_new is h, c_new is c)"
                    raise ValueError(msg)
            for k in range(i):
                if np.may_share_memory(a, out[k]):
                    msg = "out: its arrays must not overlap each other"
                    raise ValueError(msg)
        return y, h_new, c_new

    def forward(self, xs: Any, h: Any = None, c: Any = None):
        """Run whole sequences, batch-first.

        Parameters
        ----------
        xs : array_like, shape (batch, steps, input_size), the runtime's dtype
        h, c : array_like, shape (num_layers, batch, hidden_size), optional
            Initial state; zeros when None (each independently).

        Returns
        -------
        ys : ndarray, shape (batch, steps, hidden_size)
            The top layer's h at every step.
        (h_n, c_n) : ndarrays, shape (num_layers, batch, hidden_size)
            The state after the last step.

        One compiled call for the whole sequence (GIL released): the input products of up
        to 32 rows x steps are batched, so a sequence costs less than as many ``step`` calls.
        """
        xs = self._inputs(xs, "xs", 3)
        batch, steps = xs.shape[0], xs.shape[1]
        shape = self._state_shape(batch)
        h0 = None if h is None else self._array(h, "h", shape, 3)
        c0 = None if c is None else self._array(c, "c", shape, 3)
        ys = np.empty((batch, steps, self._hidden_size), self._dtype)
        h_n, c_n = np.empty(shape, self._dtype), np.empty(shape, self._dtype)
        self._kernel.sequence(xs, h0, c0, ys, h_n, c_n, self.check_finite)
        return ys, (h_n, c_n)

    __call__ = forward

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (no pickle needed; ``np.savez`` takes them): per layer ``l``, the
        keys ``"{l}.ih.<key>"`` and ``"{l}.hh.<key>"`` of ``DopedKronecker.to_dict`` and
        ``"{l}.bias"``, plus ``"num_layers"``."""
        d: dict[str, np.ndarray] = {"num_layers": np.array(self.num_layers)}
        for li, (ih, hh, bias) in enumerate(self._layers):
            for which, op in (("ih", ih), ("hh", hh)):
                for k, v in op.to_dict().items():
                    d[f"{li}.{which}.{k}"] = v
            if bias is not None:
                d[f"{li}.bias"] = bias.copy()
        return d

    @classmethod
    def from_dict(cls, d: Any, *, check_finite: bool = True) -> DopedLSTMRuntime:
        """Inverse of ``to_dict`` (also accepts the mapping ``np.load`` returns)."""
        try:
            n = int(np.asarray(d["num_layers"]))
        except KeyError:
            msg = "d: missing key 'num_layers' (expected the output of DopedLSTMRuntime.to_dict)"
            raise ValueError(msg) from None
        layers = []
        for li in range(n):
            ops = []
            for which in ("ih", "hh"):
                prefix = f"{li}.{which}."
                sub = {k[len(prefix):]: d[k] for k in d.keys() if k.startswith(prefix)}
                ops.append(DopedKronecker.from_dict(sub, check_finite=check_finite))
            layers.append((ops[0], ops[1], d[f"{li}.bias"] if f"{li}.bias" in d else None))
        return cls(layers, check_finite=check_finite)

    def __reduce__(self):
        return _rebuild_runtime, (self.to_dict(), self.check_finite)


def _rebuild_runtime(state: dict[str, np.ndarray], check_finite: bool) -> DopedLSTMRuntime:
    return DopedLSTMRuntime.from_dict(state, check_finite=check_finite)
