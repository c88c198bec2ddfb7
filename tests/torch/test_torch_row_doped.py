"""Row-doped torch layers: RowDopedEmbedding and RowDopedLinear.

Layout:
  layers          against RowDoped.lookup / reconstruct, parameter counts, no dense table
                  in a forward, gradients, padding_idx
  state           state_dict round trips (same and other sizes), to_dict, to_row_doped
  fitting         from_embedding / from_linear through row_doped_fit
  bad input       every rejection names its argument

compress "auto", which builds these layers, is in test_torch_compress_auto.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lpfast
from lpfast.torch import RowDopedEmbedding, RowDopedLinear

from _torch_helpers import DTYPES, NP, matrix, roundtrip_state_dict
from _torch_helpers import TIGHT as TOL

N, D = 120, 12
FITS = {"svd": {}, "lp": {"p": 1.0}, "projective": {"n_subspaces": 3, "seed": 0, "n_init": 2}}


_CACHE: dict = {}


def fitted(method: str, dtype=torch.float64) -> lpfast.RowDoped:
    key = (method, dtype)
    if key not in _CACHE:
        E = matrix(dtype=NP[dtype])
        _CACHE[key] = lpfast.row_doped_fit(E, method, N * D // 3, n_exact=8, **FITS[method])
    return _CACHE[key]


def ids_with_exact(res, shape=(4, 9), seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, res.shape[0], shape, generator=g)
    m = min(ids.numel(), res.n_exact)
    ids.view(-1)[:m] = torch.from_numpy(res.exact_indices[:m])  # exact rows among them
    return ids


# -- layers --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", list(FITS))
def test_embedding_matches_lookup(method, dtype):
    res = fitted(method, dtype)
    assert res.n_exact == 8
    layer = RowDopedEmbedding.from_row_doped(res)
    assert layer.exact_rows.dtype == dtype
    for shape in [(4, 9), (5,), ()]:
        ids = ids_with_exact(res, shape) if shape else torch.tensor(int(res.exact_indices[2]))
        y = layer(ids)
        assert y.shape == (*shape, D) and y.dtype == dtype
        np.testing.assert_allclose(y.detach().numpy(), res.lookup(ids.numpy()), **TOL[dtype])
    # exact rows are returned bit for bit
    ex = torch.from_numpy(res.exact_indices)
    assert torch.equal(layer(ex), torch.from_numpy(res.exact_rows))
    assert torch.equal(layer(ex.to(torch.int32)), torch.from_numpy(res.exact_rows))
    np.testing.assert_allclose(layer.dense_weight().numpy(), res.reconstruct(), **TOL[dtype])
    assert layer(torch.zeros(0, dtype=torch.int64)).shape == (0, D)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", list(FITS))
def test_linear_matches_reconstruct(method, dtype):
    res = fitted(method, dtype)
    bias = torch.randn(N, dtype=dtype)
    layer = RowDopedLinear.from_row_doped(res, bias)
    assert (layer.in_features, layer.out_features) == (D, N)
    W = torch.from_numpy(res.reconstruct())
    for lead in [(3, 2), (1,), ()]:
        x = torch.randn(*lead, D, dtype=dtype)
        y = layer(x)
        assert y.shape == (*lead, N) and y.dtype == dtype
        torch.testing.assert_close(y, x @ W.T + bias, **TOL[dtype])
    # exact output units see the stored rows exactly
    x = torch.randn(5, D, dtype=dtype)
    ex = torch.from_numpy(res.exact_indices)
    torch.testing.assert_close(layer(x)[:, ex], x @ torch.from_numpy(res.exact_rows).T + bias[ex],
                               **TOL[dtype])
    nobias = RowDopedLinear.from_row_doped(res)
    assert nobias.bias is None
    torch.testing.assert_close(nobias(x), x @ W.T, **TOL[dtype])


@pytest.mark.parametrize("method", list(FITS))
def test_parameter_count_matches_row_doped(method):
    res = fitted(method)
    emb = RowDopedEmbedding.from_row_doped(res)
    assert emb.n_params == res.n_params == emb.n_values + emb.n_indices
    assert emb.n_values == sum(p.numel() for p in emb.parameters())
    names = dict(emb.named_parameters())
    buffers = dict(emb.named_buffers())
    if method == "projective":
        assert set(names) == {"exact_rows", "coefficients", "bases"}
        assert set(buffers) == {"exact_indices", "labels"}
        assert emb.n_indices == N  # R exact indices + (N - R) labels
    else:
        assert set(names) == {"exact_rows", "U", "Vt"}
        assert set(buffers) == {"exact_indices"}
        assert emb.n_indices == res.n_exact
    assert all(b.dtype == torch.int64 for b in buffers.values())
    lin = RowDopedLinear.from_row_doped(res, torch.zeros(N, dtype=torch.float64))
    assert lin.n_params == res.n_params + N
    assert (emb.rank, emb.n_exact, emb.n_subspaces) == (res.rank, res.n_exact, res.n_subspaces)


@pytest.mark.parametrize("method", list(FITS))
def test_forward_forms_no_dense_table(method, monkeypatch):
    """Neither a lookup nor a Linear forward builds (or saves for backward) an (n, d) matrix."""
    res = fitted(method)
    emb = RowDopedEmbedding.from_row_doped(res)
    lin = RowDopedLinear.from_row_doped(res)
    monkeypatch.setattr(type(emb), "_table", lambda self: pytest.fail("dense table formed"))
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        emb(ids_with_exact(res, (3, 5))).sum().backward()
        lin(torch.randn(2, D, dtype=torch.float64)).sum().backward()
    assert saved and (N, D) not in saved and (D, N) not in saved


@pytest.mark.parametrize("method", list(FITS))
@pytest.mark.parametrize("pad", ["exact", "factor", None])
def test_gradients_reach_stored_values(method, pad):
    res = fitted(method)
    padding_idx = {"exact": int(res.exact_indices[1]), "factor": int(res.rest_indices[4]),
                   None: None}[pad]
    layer = RowDopedEmbedding.from_row_doped(res, padding_idx=padding_idx)
    ids = ids_with_exact(res, (6, 7))
    if padding_idx is not None:
        ids[0, -1] = padding_idx
    dy = torch.randn(6, 7, D, dtype=torch.float64)
    (layer(ids) * dy).sum().backward()
    # The same values through plain torch ops on the dense table.
    clone = {k: v.detach().clone().requires_grad_(True) for k, v in layer.named_parameters()}
    rest = torch.from_numpy(res.rest_indices)
    if method == "projective":
        lab = layer.labels
        factor = torch.einsum("tj,tdj->td", clone["coefficients"], clone["bases"][lab])
    else:
        factor = clone["U"] @ clone["Vt"]
    W = torch.zeros(N, D, dtype=torch.float64).index_put((rest,), factor)
    W = W.index_put((torch.from_numpy(res.exact_indices),), clone["exact_rows"])
    (W[ids] * dy).sum().backward()
    for k, p in layer.named_parameters():
        want = clone[k].grad
        if pad == "exact" and k == "exact_rows":
            want[1] = 0
        if pad == "factor" and k in ("U", "coefficients"):
            want[4] = 0
        torch.testing.assert_close(p.grad, want, msg=k)
        assert p.grad.abs().sum() > 0, k
    # a Linear's gradients, against the dense weight
    lin = RowDopedLinear.from_row_doped(res, torch.zeros(N, dtype=torch.float64))
    x = torch.randn(4, D, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, N, dtype=torch.float64)
    (lin(x) * dy).sum().backward()
    torch.testing.assert_close(x.grad, dy @ torch.from_numpy(res.reconstruct()))
    assert lin.exact_rows.grad is not None
    torch.testing.assert_close(lin.exact_rows.grad, dy[:, res.exact_indices].T @ x.detach())
    torch.testing.assert_close(lin.bias.grad, dy.sum(0))


# -- state ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", list(FITS))
def test_state_dict_roundtrip_exact(method, dtype):
    res = fitted(method, dtype)
    K = 3 if method == "projective" else None
    for cls, args, x in [(RowDopedEmbedding, (N, D), ids_with_exact(res)),
                         (RowDopedLinear, (D, N), torch.randn(3, D, dtype=dtype))]:
        layer = cls.from_row_doped(res) if cls is RowDopedEmbedding else cls.from_row_doped(res, True)
        torch.manual_seed(99)
        same = cls(*args, res.rank, res.n_exact, method=method, n_subspaces=K, dtype=dtype)
        # other sizes: no exact rows, rank 1, another K: the stored sizes are adopted
        other = cls(*args, 1, 0, method=method, n_subspaces=None if K is None else 5, dtype=dtype)
        for fresh in (same, other):
            fresh(x)  # a forward first: cached index layouts must follow the loaded state
            fresh = roundtrip_state_dict(layer, fresh)
            sd, sd2 = layer.state_dict(), fresh.state_dict()
            assert sd.keys() == sd2.keys()
            for k in sd:
                assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k], sd2[k]), k
            assert torch.equal(layer(x), fresh(x))
            assert (fresh.rank, fresh.n_exact, fresh.n_subspaces, fresh.n_params) == \
                (layer.rank, layer.n_exact, layer.n_subspaces, layer.n_params)
            assert isinstance(fresh.exact_rows, nn.Parameter) and fresh.exact_rows.requires_grad


def test_to_dict_and_to_row_doped():
    for method in FITS:
        res = fitted(method)
        layer = RowDopedEmbedding.from_row_doped(res.to_dict())
        back = layer.to_row_doped()
        for name, a in res.to_dict().items():
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(getattr(back, name), a, err_msg=name)
        assert back.n_params == res.n_params and back.method == res.method
        assert (back.p, back.budget) == (res.p, res.budget)
        ids = ids_with_exact(res).numpy()
        np.testing.assert_allclose(back.lookup(ids), layer(torch.from_numpy(ids)).detach().numpy(),
                                   rtol=1e-12, atol=1e-12)


def test_load_rejects_inconsistent_state():
    res = fitted("projective")
    layer = RowDopedEmbedding.from_row_doped(res)
    sd = layer.state_dict()
    bad = dict(sd, exact_indices=sd["exact_indices"].flip(0))
    with pytest.raises(ValueError, match="exact_indices"):
        layer.load_state_dict(bad)
    with pytest.raises(ValueError, match="labels"):
        layer.load_state_dict(dict(sd, labels=sd["labels"] + 5))
    with pytest.raises(ValueError, match="exact_rows"):
        layer.load_state_dict(dict(sd, exact_rows=sd["exact_rows"][:, :3]))
    with pytest.raises(ValueError, match="coefficients"):
        layer.load_state_dict(dict(sd, coefficients=sd["coefficients"][:-1]))
    with pytest.raises(TypeError, match="exact_indices"):  # a dtype: TypeError, as everywhere
        layer.load_state_dict(dict(sd, exact_indices=sd["exact_indices"].double()))
    with pytest.raises(RuntimeError, match="U"):  # another kind: missing/unexpected keys
        RowDopedEmbedding(N, D, 2).load_state_dict(sd)
    assert torch.equal(layer.exact_indices, torch.from_numpy(res.exact_indices))  # untouched


# -- fitting -------------------------------------------------------------------------------

def test_from_embedding_and_from_linear():
    torch.manual_seed(0)
    emb = nn.Embedding(N, D, padding_idx=3, dtype=torch.float64)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(matrix()))
    w = lpfast.usage_weights(np.arange(N)[::-1] ** 2)
    layer = RowDopedEmbedding.from_embedding(emb, "lp", ratio=4, weights=torch.from_numpy(w), p=1.0)
    res = lpfast.row_doped_fit(emb.weight.detach().numpy(), "lp", N * D // 4, weights=w, p=1.0)
    assert layer.padding_idx == 3 and layer.n_params == res.n_params <= N * D // 4
    np.testing.assert_array_equal(layer.exact_indices.numpy(), res.exact_indices)
    np.testing.assert_allclose(layer.dense_weight().numpy(), res.reconstruct(), atol=1e-12)
    assert isinstance(layer.fit_info, lpfast.RowDoped) and layer.fit_info.error == res.error

    lin = nn.Linear(D, N, dtype=torch.float32)
    rl = RowDopedLinear.from_linear(lin, "projective", 400, n_subspaces=2, seed=0, n_init=2)
    assert rl.n_params - N <= 400 and rl.method == "projective"
    assert torch.equal(rl.bias, lin.bias) and rl.exact_rows.dtype == torch.float32
    x = torch.randn(3, D)
    torch.testing.assert_close(rl(x), x @ torch.from_numpy(rl.fit_info.reconstruct()).T + lin.bias)


# -- bad input -----------------------------------------------------------------------------

def test_bad_input_names_argument():
    res = fitted("svd")
    emb = RowDopedEmbedding.from_row_doped(res)
    lin = RowDopedLinear.from_row_doped(res)
    with pytest.raises(TypeError, match="input"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="input"):
        emb(torch.tensor([N]))
    with pytest.raises(ValueError, match="input"):
        emb(torch.tensor([-1]))
    with pytest.raises(TypeError, match="input"):
        lin(torch.randn(2, D, dtype=torch.float32))
    with pytest.raises(ValueError, match="input"):
        lin(torch.randn(2, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        RowDopedEmbedding(N, D, 2, method="pca")
    with pytest.raises(ValueError, match="n_exact"):
        RowDopedEmbedding(N, D, 2, N)
    with pytest.raises(ValueError, match="rank"):
        RowDopedEmbedding(N, D, D + 1)
    with pytest.raises(ValueError, match="n_subspaces"):
        RowDopedEmbedding(N, D, 2, method="projective")
    with pytest.raises(ValueError, match="n_subspaces"):
        RowDopedEmbedding(N, D, 2, n_subspaces=3)
    with pytest.raises(ValueError, match="p"):
        RowDopedEmbedding(N, D, 2, p=1.0)
    with pytest.raises(TypeError, match="dtype"):
        RowDopedLinear(D, N, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="device"):
        RowDopedLinear(D, N, 2, device="meta")
    with pytest.raises(ValueError, match="padding_idx"):
        RowDopedEmbedding(N, D, 2, padding_idx=N)
    with pytest.raises(TypeError, match="result"):
        RowDopedEmbedding.from_row_doped(np.zeros((N, D)))
    with pytest.raises(ValueError, match="state"):
        RowDopedEmbedding.from_row_doped({"format": "other"})
    with pytest.raises(ValueError, match="bias"):
        RowDopedLinear.from_row_doped(res, torch.zeros(N + 1))
    with pytest.raises(TypeError, match="bias"):
        RowDopedLinear.from_row_doped(res, np.zeros(N))
    e = nn.Embedding(N, D)
    with pytest.raises(ValueError, match="budget, ratio"):
        RowDopedEmbedding.from_embedding(e, "svd", 100, ratio=4)
    with pytest.raises(ValueError, match="budget, ratio"):
        RowDopedEmbedding.from_embedding(e, "svd")
    with pytest.raises(ValueError, match="ratio"):
        RowDopedEmbedding.from_embedding(e, "svd", ratio=0.5)
    with pytest.raises(ValueError, match="budget"):
        RowDopedEmbedding.from_embedding(e, "svd", 10)
    with pytest.raises(TypeError, match="emb"):
        RowDopedEmbedding.from_embedding(nn.Linear(2, 2), "svd", 10)
    with pytest.raises(TypeError, match="linear"):
        RowDopedLinear.from_linear(e, "svd", 10)
