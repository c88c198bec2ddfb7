"""DopedLSTM: torch.nn.LSTM with doped Kronecker gate matrices (issue 19, item 1).

Layout:
  forward             equals torch.nn.LSTM holding the dense W = A (x) B + S (dtypes, layouts,
                      layers, given/zero states, unbatched, dropout between layers)
  gradients           gradcheck in float64 through the fused LSTM, mask included
  CMR, annealing      dropout on S's values only, in training only; the annealer drives the
                      LSTM (with CMR on and off) down to the target density
  state_dict          exact round trip after prune_ and compact_; corrupt index buffers refused
  from_lstm           each matrix is doped_kp_fit's; density 1 reproduces the LSTM
  accounting, bad input
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lpfast
import lpfast.torch as lt
from lpfast.torch import DensitySchedule, DopedKroneckerLinear, DopedLSTM, SparsityAnnealer

from _torch_helpers import DTYPES, TIGHT, one_thread, roundtrip_state_dict  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def doped(input_size=12, hidden_size=8, num_layers=2, *, seed=0, density=0.3, **kw) -> DopedLSTM:
    """A DopedLSTM with non-zero random S values (a new layer's are zero)."""
    torch.manual_seed(seed)
    m = DopedLSTM(input_size, hidden_size, num_layers, density=density, **kw)
    with torch.no_grad():
        for _, g in m.matrices():
            g.S_values.normal_(0, 0.3)
    return m


def dense_twin(m: DopedLSTM) -> nn.LSTM:
    """A plain torch.nn.LSTM computing with the doped layer's dense W = A (x) B + S."""
    lstm = nn.LSTM(m.input_size, m.hidden_size, m.num_layers, bias=m.bias,
                   batch_first=m.batch_first, dropout=m.dropout, dtype=m.ih0.A.dtype)
    with torch.no_grad():
        for name, g in m.matrices():
            kind, layer = name[:2], name[2:]
            W = sum(torch.kron(a, b) for a, b in zip(g.A, g.B))
            rows = torch.repeat_interleave(torch.arange(g.out_features),
                                           g.S_crow_indices.long().diff())
            vals = g.S_values if g.S_mask is None else g.S_values * g.S_mask
            W = W.index_put((rows, g.S_col_indices.long()), vals, accumulate=True)
            getattr(lstm, f"weight_{kind}_l{layer}").copy_(W)
            if g.bias is not None:
                getattr(lstm, f"bias_{kind}_l{layer}").copy_(g.bias)
    return lstm.train(m.training)


# -- forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers,rank,bias", [(1, 1, True), (2, 2, True), (3, 1, False)])
@pytest.mark.parametrize("given_state", [False, True])
def test_forward_equals_dense_lstm(dtype, batch_first, num_layers, rank, bias, given_state):
    m = doped(12, 8, num_layers, rank=rank, bias=bias, batch_first=batch_first, dtype=dtype)
    ref = dense_twin(m)
    x = torch.randn(3, 5, 12, dtype=dtype)  # (batch, T) or (T, batch)
    batch = x.shape[0] if batch_first else x.shape[1]
    hx = None
    if given_state:
        hx = (torch.randn(num_layers, batch, 8, dtype=dtype),
              torch.randn(num_layers, batch, 8, dtype=dtype))
    y, (h, c) = m(x, hx)
    y_ref, (h_ref, c_ref) = ref(x, hx)
    assert y.dtype == dtype and y.shape == y_ref.shape
    for got, want in ((y, y_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(got, want, **TIGHT[dtype])
    if batch_first:  # h_n is the last step of the output, whatever the layout
        torch.testing.assert_close(h[-1], y[:, -1], **TIGHT[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_input_and_dense_weights(dtype):
    m = doped(12, 8, 2, dtype=dtype)
    x = torch.randn(6, 12, dtype=dtype)
    hx = (torch.randn(2, 8, dtype=dtype), torch.randn(2, 8, dtype=dtype))
    y, (h, c) = m(x, hx)
    y_ref, (h_ref, c_ref) = dense_twin(m)(x, hx)
    assert y.shape == (6, 8) and h.shape == c.shape == (2, 8)
    torch.testing.assert_close(y, y_ref, **TIGHT[dtype])
    torch.testing.assert_close(c, c_ref, **TIGHT[dtype])
    # dense_weights() / to_lstm() are the same dense twin
    twin = dense_twin(m).state_dict()
    for k, v in m.dense_weights().items():
        torch.testing.assert_close(v, twin[k], **TIGHT[dtype])
    torch.testing.assert_close(m.to_lstm()(x, hx)[0], y_ref, **TIGHT[dtype])


def test_dropout_between_layers_is_torchs():
    # Same RNG stream as nn.LSTM's: CMR off draws nothing before the fused LSTM does.
    m = doped(12, 8, 3, dropout=0.4)
    ref = dense_twin(m)
    x = torch.randn(5, 3, 12)
    torch.manual_seed(7)
    y = m(x)[0]
    torch.manual_seed(7)
    y_ref = ref(x)[0]
    torch.testing.assert_close(y, y_ref, **TIGHT[torch.float32])
    assert not torch.allclose(y, m.eval()(x)[0])  # dropout acted in training
    torch.testing.assert_close(m(x)[0], ref.eval()(x)[0], **TIGHT[torch.float32])


# -- gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_float64(masked):
    m = doped(4, 3, 2, rank=2, density=0.5, dtype=torch.float64, batch_first=True)
    if masked:
        m.prune_(0.25)
    names = [n for n, p in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, *ps):
        y, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x, (h0, c0)))
        return y, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))
    if masked:  # masked entries of S get no gradient
        y, h, c = f(x, h0, c0, *params)
        (y.sum() + c.sum()).backward()
        for name, p in zip(names, params):
            if name.endswith("S_values"):
                mask = getattr(m, name.split(".")[0]).S_mask
                assert p.grad is not None and torch.all(p.grad[mask == 0] == 0)
                assert torch.any(p.grad[mask == 1] != 0)


def test_gradients_reach_every_parameter():
    m = doped(12, 8, 2)
    y, (h, c) = m(torch.randn(4, 3, 12))
    (y.square().sum() + c.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), name


# -- CMR and annealing ---------------------------------------------------------------------

def test_cmr_drops_only_s_values_in_training():
    m = doped(12, 8, 1, density=0.5, cmr=0.5)
    g = m.hh0
    kron = sum(torch.kron(a, b) for a, b in zip(g.A, g.B)).detach()
    torch.manual_seed(3)
    W = g.effective_weight().detach()
    rows = torch.repeat_interleave(torch.arange(g.out_features), g.S_crow_indices.long().diff())
    delta = (W - kron)[rows, g.S_col_indices.long()]
    v = g.S_values.detach()
    dropped = delta.abs() < 1e-6
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(delta[~dropped], 2 * v[~dropped])  # survivors scaled 1/(1-p)
    off = torch.ones_like(W, dtype=torch.bool)
    off[rows, g.S_col_indices.long()] = False
    torch.testing.assert_close(W[off], kron[off])  # the Kronecker part untouched
    x = torch.randn(4, 2, 12)
    assert not torch.allclose(m(x)[0], m(x)[0])  # other entries dropped each call
    m.eval()
    torch.testing.assert_close(m(x)[0], dense_twin(m)(x)[0])  # eval: no dropout
    m.cmr = 0.0
    assert all(g.cmr == 0.0 for _, g in m.matrices())
    with pytest.raises(ValueError, match="cmr"):
        m.cmr = 1.0


@pytest.mark.parametrize("cmr", [0.0, 0.3])
def test_annealer_drives_lstm_to_target(cmr):
    torch.manual_seed(0)
    lstm = DopedLSTM(10, 8, 2, density=1.0, cmr=cmr, batch_first=True)
    head = nn.Linear(8, 1)
    model = nn.ModuleDict({"lstm": lstm, "head": head})
    ann = SparsityAnnealer(model, DensitySchedule(1.0, 0.05, 0, 12, power=1), every=3)
    assert ann.layers == [lstm]  # the LSTM prunes its own gate matrices
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, t = torch.randn(6, 5, 10), torch.randn(6, 5, 1)
    for _ in range(15):
        loss = nn.functional.mse_loss(head(lstm(x)[0]), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ann.step()
    assert ann.density == pytest.approx(0.05)
    sizes = {n: g.out_features * g.in_features for n, g in lstm.matrices()}
    assert all(g.nnz == round(0.05 * sizes[n]) for n, g in lstm.matrices())
    kept = {n: g.S_values.detach()[g.S_mask.bool()].abs().min() for n, g in lstm.matrices()}
    ann.finalize()
    for n, g in lstm.matrices():
        assert g.S_mask is None and g.S_values.numel() == round(0.05 * sizes[n])
        assert g.S_values.abs().min() == kept[n]
    assert lstm.density == pytest.approx(0.05, abs=0.005)
    assert torch.isfinite(lstm(x)[0]).all()


def test_prune_keeps_largest_entries_per_matrix():
    m = doped(12, 8, 2, density=0.6)
    before = {n: g.S_values.detach().abs().clone() for n, g in m.matrices()}
    total = m.prune_(0.1)
    assert total == m.nnz == sum(round(0.1 * g.out_features * g.in_features)
                                  for _, g in m.matrices())
    for n, g in m.matrices():
        kept = g.S_mask.bool()
        assert before[n][kept].min() >= before[n][~kept].max()
    assert m.prune_(0.5) == total  # never regrows
    assert m.compact_() is m and m.nnz == total
    assert all(g.S_mask is None for _, g in m.matrices())


def test_annealer_takes_lstm_and_linear_layers_directly():
    lstm = DopedLSTM(8, 4, density=1.0)
    lin = DopedKroneckerLinear(8, 4, (2, 2), (2, 4), 1.0)
    ann = SparsityAnnealer([lstm, lin], DensitySchedule(1.0, 0.25, 0, 2), every=1)
    ann.step()
    ann.step()
    assert lstm.density == lin.density == pytest.approx(0.25)
    with pytest.raises(ValueError, match="layers"):
        SparsityAnnealer([nn.Linear(2, 2)], DensitySchedule(1.0, 0.25, 0, 2))
    with pytest.raises(ValueError, match="layers"):
        SparsityAnnealer(nn.LSTM(2, 2), DensitySchedule(1.0, 0.25, 0, 2))


# -- state_dict ----------------------------------------------------------------------------

def test_state_dict_round_trip_after_prune_and_compact():
    m = doped(12, 8, 2, density=0.4, batch_first=True)
    x = torch.randn(3, 4, 12)
    m.prune_(0.1)
    fresh = roundtrip_state_dict(m, DopedLSTM(12, 8, 2, density=0.7, batch_first=True))
    for (_, a), (_, b) in zip(m.matrices(), fresh.matrices()):
        assert torch.equal(a.S_mask, b.S_mask) and a.nnz == b.nnz
    assert torch.equal(fresh(x)[0], m(x)[0])
    m.compact_()
    again = roundtrip_state_dict(m, fresh)  # S shrinks on load: nnz adopted from the file
    for (_, a), (_, b) in zip(m.matrices(), again.matrices()):
        assert b.S_mask is None and b.S_values.shape == a.S_values.shape
    sd, sd2 = m.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert torch.equal(again(x)[0], m(x)[0])


@pytest.mark.parametrize("corrupt,match", [
    (lambda sd: sd["hh0.S_col_indices"].__setitem__(0, 8), "index|range|bound"),
    (lambda sd: sd["hh0.S_col_indices"].__setitem__(1, -1), "index|range|bound|negative"),
    (lambda sd: sd["ih1.S_crow_indices"].__setitem__(3, 10**6), "indptr|monoton|nnz"),
    (lambda sd: sd.__setitem__("ih0.S_crow_indices", sd["ih0.S_crow_indices"][:-1]), "indptr|shape|length|rows"),
    (lambda sd: sd.__setitem__("ih0.S_values", sd["ih0.S_values"][:-2]), "entries|nnz|data|S_col_indices.*shape"),
    (lambda sd: sd.__setitem__("hh1.S_mask", torch.ones(3)), "S_mask"),
])
def test_corrupt_index_buffers_are_refused_at_load(corrupt, match):
    m = doped(12, 8, 2, density=0.4)
    m.prune_(0.2)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    corrupt(sd)
    fresh = DopedLSTM(12, 8, 2, density=0.4)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)
    for (_, a), (_, b) in zip(fresh.matrices(), DopedLSTM(12, 8, 2, density=0.4).matrices()):
        assert a.S_values.shape == b.S_values.shape  # nothing adopted from the bad file


def test_doped_linear_refuses_corrupt_pattern_at_load():
    layer = DopedKroneckerLinear(8, 32, (4, 4), (8, 2), 0.4)
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["S_col_indices"][-1] = 8
    with pytest.raises(ValueError, match="S_"):
        DopedKroneckerLinear(8, 32, (4, 4), (8, 2), 0.4).load_state_dict(sd)


def test_index_dtype_of_state_dict_checked():
    m = doped(12, 8, 1)
    sd = m.state_dict()
    sd["ih0.S_col_indices"] = sd["ih0.S_col_indices"].to(torch.float32)
    with pytest.raises(TypeError, match="S_"):
        DopedLSTM(12, 8, 1).load_state_dict(sd)


# -- from_lstm -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_from_lstm_fits_each_matrix_with_doped_kp_fit(dtype):
    torch.manual_seed(0)
    lstm = nn.LSTM(12, 8, 2, batch_first=True, dtype=dtype)
    m = DopedLSTM.from_lstm(lstm, a_shape=(4, 4), density=0.2, rank=2, n_iter=2)
    assert m.batch_first and m.num_layers == 2 and m.ih0.A.dtype == dtype
    dense = m.dense_weights()
    for name, g in m.matrices():
        kind, layer = name[:2], name[2:]
        W = getattr(lstm, f"weight_{kind}_l{layer}").detach().numpy()
        op = lpfast.doped_kp_fit(W, (4, 4), (W.shape[0] // 4, W.shape[1] // 4), 0.2,
                                 rank=2, n_iter=2)
        assert g.a_shape == (4, 4) and g.nnz == op.nnz
        np.testing.assert_array_equal(dense[f"weight_{kind}_l{layer}"].numpy(), op.to_dense())
        assert torch.equal(g.bias, getattr(lstm, f"bias_{kind}_l{layer}"))
        assert m.fit_info[name]["relative_error"] == min(op.fit_info["relative_error"])


def test_from_lstm_full_density_reproduces_the_lstm():
    torch.manual_seed(1)
    lstm = nn.LSTM(6, 4, 2, dtype=torch.float64)
    m = DopedLSTM.from_lstm(lstm, density=1.0, n_iter=1)  # S holds the whole residual
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    y, (h, c) = m(x)
    y_ref, (h_ref, c_ref) = lstm(x)
    torch.testing.assert_close(y, y_ref, **TIGHT[torch.float64])
    torch.testing.assert_close(c, c_ref, **TIGHT[torch.float64])
    assert set(m.fit_info) == {"ih0", "hh0", "ih1", "hh1"}


def test_from_lstm_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="lstm"):
        DopedLSTM.from_lstm(nn.LSTM(4, 4, bidirectional=True))
    with pytest.raises(ValueError, match="lstm"):
        DopedLSTM.from_lstm(nn.LSTM(4, 4, proj_size=2))
    with pytest.raises(TypeError, match="lstm"):
        DopedLSTM.from_lstm(nn.GRU(4, 4))
    with pytest.raises(ValueError, match="a_shape"):
        DopedLSTM.from_lstm(nn.LSTM(4, 4), a_shape=(3, 2))


# -- runtime -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_runtime_equals_torch_forward(dtype, batch_first):
    m = doped(12, 8, 2, rank=2, density=0.4, dtype=dtype, batch_first=batch_first)
    m.prune_(0.15)  # masked entries must not reach the runtime
    m.eval()
    rt = m.runtime()
    assert isinstance(rt, lpfast.DopedLSTMRuntime)
    assert (rt.num_layers, rt.input_size, rt.hidden_size) == (2, 12, 8)
    xs = torch.randn(3, 6, 12, dtype=dtype)  # batch-first for the runtime
    h0, c0 = torch.randn(2, 3, 8, dtype=dtype), torch.randn(2, 3, 8, dtype=dtype)
    with torch.no_grad():
        y, (h, c) = m(xs if batch_first else xs.transpose(0, 1), (h0, c0))
    y = y if batch_first else y.transpose(0, 1)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    ys, (hn, cn) = rt.forward(xs.numpy(), h0.numpy(), c0.numpy())
    np.testing.assert_allclose(ys, y.numpy(), **tol)
    np.testing.assert_allclose(hn, h.numpy(), **tol)
    np.testing.assert_allclose(cn, c.numpy(), **tol)
    # token by token, the caller keeping the state
    hs, cs = h0.numpy(), c0.numpy()
    for t in range(xs.shape[1]):
        yt, hs, cs = rt.step(xs[:, t].numpy(), hs, cs)
        np.testing.assert_allclose(yt, y[:, t].numpy(), **tol)
    np.testing.assert_allclose(cs, c.numpy(), **tol)
    # zero state by default, and no biases
    nb = doped(12, 8, 1, bias=False, dtype=dtype).eval()
    with torch.no_grad():
        y0 = nb(xs.transpose(0, 1))[0].transpose(0, 1)
    np.testing.assert_allclose(nb.runtime().forward(xs.numpy())[0], y0.numpy(), **tol)


# -- accounting ----------------------------------------------------------------------------

def test_parameter_accounting():
    m = DopedLSTM(12, 8, 2, density=0.1, rank=2, a_shape={"ih0": (4, 3)}, b_shape={"hh1": (8, 2)})
    assert m.ih0.a_shape == (4, 3) and m.ih0.b_shape == (8, 4)
    assert m.hh0.a_shape == m.ih1.a_shape == m.hh1.a_shape == (4, 4)
    kron = 2 * (12 + 32) + 3 * 2 * (16 + 16)
    nnz = round(0.1 * 32 * 12) + 3 * round(0.1 * 32 * 8)
    assert m.nnz == nnz
    assert m.n_params == kron + nnz + 4 * 32 == sum(p.numel() for p in m.parameters())
    assert m.n_indices == nnz + 4 * 33
    assert m.stored_bytes == 4 * m.n_params + 4 * m.n_indices
    m.prune_(0.05)
    assert m.n_params < sum(p.numel() for p in m.parameters())  # masked entries do not count
    kp = DopedLSTM(12, 8, 1, density=0.0)  # no S stored: no indices either
    assert kp.n_indices == 0 and kp.stored_bytes == 4 * kp.n_params
    assert lt.DopedLSTM is DopedLSTM and "DopedLSTM" in lt.__all__


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(hidden_size=0), ValueError, "hidden_size"),
    (dict(input_size=-1), ValueError, "input_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(cmr=1.0), ValueError, "cmr"),
    (dict(density=1.5), ValueError, "density"),
    (dict(rank=0), ValueError, "rank"),
    (dict(a_shape=(5, 4)), ValueError, "a_shape"),
    (dict(b_shape=(8, 5)), ValueError, "b_shape"),
    (dict(a_shape=(4, 4), b_shape=(8, 4)), ValueError, "a_shape"),
    (dict(a_shape={"ih0": (4, 3), "hh2": (4, 4)}), ValueError, "hh2"),
    (dict(a_shape="4x4"), TypeError, "a_shape"),
    (dict(bidirectional=True), ValueError, "bidirectional"),
    (dict(proj_size=4), ValueError, "proj_size"),
    (dict(dtype=torch.float16), TypeError, "dtype"),
])
def test_bad_construction(kwargs, exc, match):
    args = dict(input_size=12, hidden_size=8, num_layers=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        DopedLSTM(args.pop("input_size"), args.pop("hidden_size"), args.pop("num_layers"), **args)


def test_dropout_with_one_layer_warns_as_torch_does():
    with pytest.warns(UserWarning, match="dropout"):
        DopedLSTM(4, 4, 1, dropout=0.2)


def test_bad_forward_input():
    m = doped(12, 8, 2)
    x = torch.randn(5, 3, 12)
    h = torch.zeros(2, 3, 8)
    cases = [
        ((torch.randn(5, 3, 11),), ValueError, "input"),
        ((torch.randn(5, 3, 2, 12),), ValueError, "input"),
        ((x.double(),), TypeError, "input"),
        ((x.numpy(),), TypeError, "input"),
        ((torch.where(x > 2, float("nan"), x),), ValueError, "input.*NaN"),
        ((x, (h, torch.zeros(2, 4, 8))), ValueError, "c_0"),
        ((x, (torch.zeros(1, 3, 8), h)), ValueError, "h_0"),
        ((x, (torch.zeros(2, 3, 7), h)), ValueError, "h_0"),
        ((x, (h, torch.full((2, 3, 8), float("inf")))), ValueError, "c_0"),
        ((x, h), TypeError, "hx"),
        ((torch.randn(5, 12), (h, h)), ValueError, "h_0"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            m(*args)
    packed = nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2])
    with pytest.raises(TypeError, match="PackedSequence"):
        m(packed)


def test_copies_and_pickles_compute_the_same():
    import copy
    import pickle

    m = doped(12, 8, 2, density=0.4)
    x = torch.randn(4, 2, 12)
    m(x)  # fills the gate matrices' position caches
    m.prune_(0.2)
    y = m(x)[0]
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.equal(other(x)[0], y)
        other.compact_()  # the copy's caches follow its own buffers
        assert torch.equal(other(x)[0], y)
    assert "_positions" not in pickle.loads(pickle.dumps(m.hh0)).__dict__


def test_effective_weight_of_doped_linear():
    layer = DopedKroneckerLinear(12, 32, (4, 4), (8, 3), 0.3, rank=2, cmr=0.4)
    with torch.no_grad():
        layer.S_values.normal_()
    layer.eval()
    torch.testing.assert_close(layer.effective_weight(), layer.dense_weight())
    layer.train()
    W = layer.effective_weight()
    W.sum().backward()
    assert all(p.grad is not None for p in (layer.A, layer.B, layer.S_values))
    # each stored entry's gradient is its dropout factor: 0 or 1 / (1 - p)
    g = layer.S_values.grad
    assert torch.all((g == 0) | torch.isclose(g, torch.tensor(1 / 0.6)))
