"""lpfast.DopedLSTMRuntime against lpfast.reference.doped_lstm_forward (dense W), steps
against sequences, serialization, and bad input."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import lpfast
from lpfast import reference as ref
from shared import DTYPES

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _op(rng, m, n, a_shape, b_shape, *, rank=1, density=0.1, scale=0.3, dtype=np.float64):
    (m1, n1), (m2, n2) = a_shape, b_shape
    assert (m1 * m2, n1 * n2) == (m, n)
    A = scale * rng.standard_normal((rank, m1, n1))
    B = rng.standard_normal((rank, m2, n2))
    S = None
    if density is not None:
        S = sp.random(m, n, density=density, format="csr", rng=rng,
                      data_rvs=lambda k: scale * rng.standard_normal(k))
        S = S.astype(dtype)
    return lpfast.DopedKronecker(A.astype(dtype), B.astype(dtype), S)


def _layers(I=12, H=10, L=2, *, rank=1, density=0.1, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {12: ((4, 3), (10, 4)), 10: ((8, 5), (5, 2))}  # (40, I) factorizations
    hh_shape = ((5, 2), (8, 5))
    layers = []
    for li in range(L):
        n = I if li == 0 else H
        ih = _op(rng, 4 * H, n, *shapes[n], rank=rank, density=density, dtype=dtype)
        hh = _op(rng, 4 * H, H, *hh_shape, rank=rank, density=density, dtype=dtype)
        bias = (0.3 * rng.standard_normal(4 * H)).astype(dtype)
        layers.append((ih, hh, bias))
    return layers


def _dense(layers):
    return [(ih.to_dense(), hh.to_dense(), b) for ih, hh, b in layers]


def _close(got, want, dtype):
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("case", ["doped", "zero_S", "no_S", "rank2"])
def test_forward_matches_reference(dtype, batch, case):
    kw = {"doped": {}, "zero_S": {"density": 0.0}, "no_S": {"density": None},
          "rank2": {"rank": 2}}[case]
    layers = _layers(dtype=dtype, **kw)
    rt = lpfast.DopedLSTMRuntime(layers)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((batch, 40, 12)).astype(dtype)  # 40 steps: several chunks
    h0 = (0.5 * rng.standard_normal((2, batch, 10))).astype(dtype)
    c0 = rng.standard_normal((2, batch, 10)).astype(dtype)
    dense = [(w.astype(np.float64), u.astype(np.float64), b.astype(np.float64))
             for w, u, b in _dense(layers)]
    want, (wh, wc) = ref.doped_lstm_forward(xs.astype(np.float64), dense, h0, c0)
    ys, (h, c) = rt.forward(xs, h0, c0)
    assert ys.dtype == h.dtype == c.dtype == dtype
    assert ys.shape == (batch, 40, 10) and h.shape == c.shape == (2, batch, 10)
    _close(ys, want, dtype)
    _close(h, wh, dtype)
    _close(c, wc, dtype)
    # Zero initial state when h, c are omitted.
    want0, (wh0, wc0) = ref.doped_lstm_forward(xs.astype(np.float64), dense)
    ys0, (h0n, c0n) = rt.forward(xs)
    _close(ys0, want0, dtype)
    _close(c0n, wc0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 7])
def test_steps_equal_forward(dtype, batch):
    rt = lpfast.DopedLSTMRuntime(_layers(L=3, dtype=dtype))
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((batch, 9, 12)).astype(dtype)
    ys, (hn, cn) = rt.forward(xs)
    h = np.zeros((3, batch, 10), dtype)
    c = np.zeros_like(h)
    h_in, c_in = h.copy(), c.copy()
    for t in range(9):
        x = np.ascontiguousarray(xs[:, t])
        x_in = x.copy()
        y, h2, c2 = rt.step(x, h, c)
        np.testing.assert_array_equal(x, x_in)  # inputs untouched
        np.testing.assert_array_equal(h, h_in)
        _close(y, ys[:, t], dtype)
        np.testing.assert_array_equal(y, h2[-1])
        h, c = h2, c2
        h_in, c_in = h.copy(), c.copy()
    _close(h, hn, dtype)
    _close(c, cn, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_in_place_state(dtype):
    rt = lpfast.DopedLSTMRuntime(_layers(dtype=dtype))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 12)).astype(dtype)
    h = rng.standard_normal((2, 4, 10)).astype(dtype)
    c = rng.standard_normal((2, 4, 10)).astype(dtype)
    y_ref, h_ref, c_ref = rt.step(x, h, c)
    y = np.empty((4, 10), dtype)
    got = rt.step(x, h, c, out=(y, h, c))
    assert got[0] is y and got[1] is h and got[2] is c
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(c, c_ref)


def test_different_input_size_and_single_layer():
    layers = _layers(I=12, H=10, L=1)
    rt = lpfast.DopedLSTMRuntime(layers)
    assert (rt.num_layers, rt.input_size, rt.hidden_size) == (1, 12, 10)
    xs = np.random.default_rng(4).standard_normal((3, 5, 12))
    want, _ = ref.doped_lstm_forward(xs, _dense(layers))
    _close(rt.forward(xs)[0], want, np.float64)


def test_no_bias():
    layers = [(ih, hh, None) for ih, hh, _ in _layers()]
    xs = np.random.default_rng(5).standard_normal((2, 4, 12))
    want, _ = ref.doped_lstm_forward(xs, _dense(layers))
    _close(lpfast.DopedLSTMRuntime(layers).forward(xs)[0], want, np.float64)


def test_threads_agree():
    rt = lpfast.DopedLSTMRuntime(_layers(dtype=np.float32))
    xs = np.random.default_rng(6).standard_normal((9, 6, 12)).astype(np.float32)
    lpfast.set_num_threads(1)
    one = rt.forward(xs)[0]
    lpfast.set_num_threads(2)
    two = rt.forward(xs)[0]
    # Rows of the batch are independent and each is computed by one thread in one order.
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_row_step_thread_setting(dtype):
    # Large enough (~2.5M flops per step) that threads would pay: the thread setting does
    # not change a single row's step (it runs on one thread), and it matches the reference.
    rng = np.random.default_rng(11)
    layers = []
    for _ in range(2):
        ih = _op(rng, 512, 128, (32, 16), (16, 8), density=0.5, scale=0.05, dtype=dtype)
        hh = _op(rng, 512, 128, (32, 16), (16, 8), density=0.5, scale=0.05, dtype=dtype)
        layers.append((ih, hh, (0.1 * rng.standard_normal(512)).astype(dtype)))
    rt = lpfast.DopedLSTMRuntime(layers)
    x = rng.standard_normal((1, 128)).astype(dtype)
    h = (0.5 * rng.standard_normal((2, 1, 128))).astype(dtype)
    c = rng.standard_normal((2, 1, 128)).astype(dtype)
    lpfast.set_num_threads(1)
    one = rt.step(x, h, c)
    lpfast.set_num_threads(2)
    two = rt.step(x, h, c)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    dense = [(w.astype(np.float64), u.astype(np.float64), b.astype(np.float64))
             for w, u, b in _dense(layers)]
    want, (wh, wc) = ref.doped_lstm_forward(x[:, None].astype(np.float64), dense, h, c)
    _close(two[0], want[:, 0], dtype)
    _close(two[1], wh, dtype)
    _close(two[2], wc, dtype)


def test_concurrent_calls():
    rt = lpfast.DopedLSTMRuntime(_layers())
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((2, 8, 12)) for _ in range(4)]
    want = [rt.forward(x)[0] for x in xs]
    got = [None] * 4

    def run(i):
        for _ in range(20):
            got[i] = rt.forward(xs[i])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dict_round_trip(dtype, tmp_path):
    rt = lpfast.DopedLSTMRuntime(_layers(dtype=dtype))
    d = rt.to_dict()
    assert all(isinstance(v, np.ndarray) for v in d.values())
    np.savez(tmp_path / "rt.npz", **d)
    with np.load(tmp_path / "rt.npz", allow_pickle=False) as f:
        back = lpfast.DopedLSTMRuntime.from_dict(dict(f))
    again = pickle.loads(pickle.dumps(rt))
    xs = np.random.default_rng(8).standard_normal((2, 5, 12)).astype(dtype)
    for other in (back, again):
        assert other.dtype == rt.dtype and other.n_params == rt.n_params
        np.testing.assert_array_equal(other.forward(xs)[0], rt.forward(xs)[0])


def test_properties():
    layers = _layers()
    rt = lpfast.DopedLSTMRuntime(layers)
    assert rt.dtype == np.float64
    assert rt.n_params == sum(ih.n_params + hh.n_params + b.size for ih, hh, b in layers)
    assert rt.nbytes > sum(ih.nbytes + hh.nbytes for ih, hh, _ in layers)
    assert "DopedLSTMRuntime(num_layers=2" in repr(rt)
    assert "DopedLSTMRuntime" in lpfast.__all__


def test_empty_batch_and_steps():
    rt = lpfast.DopedLSTMRuntime(_layers())
    ys, (h, c) = rt.forward(np.zeros((0, 3, 12)))
    assert ys.shape == (0, 3, 10) and h.shape == (2, 0, 10)
    h0 = np.ones((2, 2, 10))
    ys, (h, c) = rt.forward(np.zeros((2, 0, 12)), h0, h0)
    assert ys.shape == (2, 0, 10)
    np.testing.assert_array_equal(h, h0)


# -- bad input ----------------------------------------------------------------------------

def test_bad_hidden_sizes():
    layers = _layers()
    rng = np.random.default_rng(9)
    hh_other = _op(rng, 48, 12, (4, 3), (12, 4))  # hidden 12 in layer 1, 10 in layer 0
    with pytest.raises(ValueError, match=r"layers\[1\]\.hh.*does not tile.*\(40, 10\)"):
        lpfast.DopedLSTMRuntime([layers[0], (layers[1][0], hh_other, layers[1][2])])
    not_square = _op(rng, 40, 12, (4, 3), (10, 4))
    with pytest.raises(ValueError, match=r"layers\[0\]\.hh.*4 \* hidden_size"):
        lpfast.DopedLSTMRuntime([(layers[0][0], not_square, layers[0][2])])


def test_factor_shapes_that_do_not_tile():
    layers = _layers()
    rng = np.random.default_rng(10)
    wrong_in = _op(rng, 40, 12, (4, 3), (10, 4))  # layer 1's input is hidden = 10, not 12
    with pytest.raises(ValueError, match=r"layers\[1\]\.ih: kron\(A \(4, 3\), B \(10, 4\)\).*"
                                         r"does not tile the gate matrix \(40, 10\)"):
        lpfast.DopedLSTMRuntime([layers[0], (wrong_in, layers[1][1], layers[1][2])])
    wrong_rows = _op(rng, 36, 12, (4, 3), (9, 4))
    with pytest.raises(ValueError, match=r"layers\[0\]\.ih.*does not tile"):
        lpfast.DopedLSTMRuntime([(wrong_rows, layers[0][1], layers[0][2])])


def test_bad_layer_entries():
    layers = _layers()
    ih, hh, b = layers[0]
    with pytest.raises(ValueError, match="at least one layer"):
        lpfast.DopedLSTMRuntime([])
    with pytest.raises(TypeError, match="sequence"):
        lpfast.DopedLSTMRuntime(ih)
    with pytest.raises(TypeError, match=r"layers\[0\]: expected a tuple"):
        lpfast.DopedLSTMRuntime([(ih, hh)])
    with pytest.raises(TypeError, match=r"layers\[0\]\.ih: expected an lpfast.DopedKronecker"):
        lpfast.DopedLSTMRuntime([(ih.to_dense(), hh, b)])
    with_bias = lpfast.DopedKronecker(ih.A, ih.B, ih.S, bias=b)
    with pytest.raises(ValueError, match=r"layers\[0\]\.ih: the operator holds a bias"):
        lpfast.DopedLSTMRuntime([(with_bias, hh, b)])
    with pytest.raises(ValueError, match=r"layers\[0\]\.bias: expected shape \(40,\)"):
        lpfast.DopedLSTMRuntime([(ih, hh, b[:-1])])
    with pytest.raises(TypeError, match=r"layers\[0\]\.bias: dtype float32"):
        lpfast.DopedLSTMRuntime([(ih, hh, b.astype(np.float32))])
    f32 = _layers(dtype=np.float32)[0][1]
    with pytest.raises(TypeError, match=r"layers\[0\]\.hh: dtype float32"):
        lpfast.DopedLSTMRuntime([(ih, f32, b)])


def test_non_finite_parameters():
    ih, hh, b = _layers()[0]
    bad_b = b.copy()
    bad_b[3] = np.nan
    with pytest.raises(ValueError, match=r"layers\[0\]\.bias: contains NaN"):
        lpfast.DopedLSTMRuntime([(ih, hh, bad_b)])
    A = ih.A.copy()
    A[0, 0, 0] = np.inf
    bad_ih = lpfast.DopedKronecker(A, ih.B, ih.S, check_finite=False)
    with pytest.raises(ValueError, match=r"layers\[0\]\.ih\.A: contains NaN or Inf"):
        lpfast.DopedLSTMRuntime([(bad_ih, hh, b)])
    lpfast.DopedLSTMRuntime([(bad_ih, hh, b)], check_finite=False)  # opted out


def test_bad_inputs_and_states():
    rt = lpfast.DopedLSTMRuntime(_layers())
    x = np.zeros((3, 12))
    h = np.zeros((2, 3, 10))
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 12\)"):
        rt.step(np.zeros((3, 11)), h, h)
    with pytest.raises(ValueError, match=r"h: expected shape \(2, 3, 10\)"):
        rt.step(x, np.zeros((2, 3, 9)), h)
    with pytest.raises(ValueError, match=r"c: expected shape \(2, 3, 10\)"):
        rt.step(x, h, np.zeros((1, 3, 10)))
    with pytest.raises(ValueError, match=r"h: expected shape \(2, 3, 10\)"):
        rt.step(x, np.zeros((2, 4, 10)), h)  # batch differs from x's
    with pytest.raises(ValueError, match=r"xs: expected shape \(batch, steps, 12\)"):
        rt.forward(np.zeros((3, 12)))
    with pytest.raises(ValueError, match=r"c: expected shape \(2, 3, 10\)"):
        rt.forward(np.zeros((3, 4, 12)), None, np.zeros((2, 3, 11)))
    with pytest.raises(TypeError, match="x: dtype float32 does not match"):
        rt.step(x.astype(np.float32), h, h)
    nan_x = x.copy()
    nan_x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        rt.step(nan_x, h, h)
    nan_h = h.copy()
    nan_h[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="h: contains NaN or Inf"):
        rt.step(x, nan_h, h)
    nan_xs = np.zeros((3, 4, 12))
    nan_xs[0, 3, 0] = np.nan
    with pytest.raises(ValueError, match="xs: contains NaN or Inf"):
        rt.forward(nan_xs)
    # Opting out computes (NaN propagates) instead of raising.
    lax = lpfast.DopedLSTMRuntime(_layers(), check_finite=False)
    y, _, _ = lax.step(nan_x, h, h)
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()


def test_bad_out():
    rt = lpfast.DopedLSTMRuntime(_layers())
    x, h, c = np.zeros((3, 12)), np.zeros((2, 3, 10)), np.zeros((2, 3, 10))
    y = np.empty((3, 10))
    with pytest.raises(ValueError, match=r"out\[0\] \(y\): expected shape"):
        rt.step(x, h, c, out=(np.empty((3, 9)), h, c))
    with pytest.raises(TypeError, match=r"out\[1\] \(h_new\): expected a C-contiguous"):
        rt.step(x, h, c, out=(y, h.astype(np.float32), c))
    with pytest.raises(ValueError, match="must not overlap"):
        rt.step(x, h, c, out=(y, c, h))
    with pytest.raises(ValueError, match="must not overlap"):
        rt.step(x, h, c, out=(h[0], h, c))
