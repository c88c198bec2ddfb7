"""lpfast.torch layers: every layer against its dense weight; LowRank*, ProjectiveEmbedding.

Layout:
  forward vs dense_weight   every layer, float32/float64, leading dims, gradients
  projective                inference path, parameter count and layout
  state_dict round trip     exact, every layer
  fitting                   LowRank* against SVD and lpfast.lp_subspace, padding_idx kept
  bad input                 every rejection names its argument

DopedKroneckerLinear's own behaviour (fitting, annealing, CMR, serving cache, compile) is in
test_torch_doped.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import lpfast
from lpfast.torch import (
    DensitySchedule,
    DopedKroneckerLinear,
    LowRankEmbedding,
    LowRankLinear,
    ProjectiveEmbedding,
    SparsityAnnealer,
)

from _torch_helpers import DTYPES, TOL, embedding, linear, roundtrip_state_dict


def layers(dtype) -> dict[str, torch.nn.Module]:
    torch.manual_seed(1)
    return {
        "doped": DopedKroneckerLinear(24, 20, (4, 6), (5, 4), 0.2, rank=2, dtype=dtype),
        "doped_nobias": DopedKroneckerLinear(24, 20, (4, 6), (5, 4), 0.0, bias=False, dtype=dtype),
        "lowrank_linear": LowRankLinear(24, 20, 5, dtype=dtype),
        "lowrank_emb": LowRankEmbedding(50, 16, 4, padding_idx=0, dtype=dtype),
        "projective": ProjectiveEmbedding(50, 16, 3, 4, dtype=dtype),
    }


def sample_input(name: str, layer, dtype, lead=(3, 2)):
    if "emb" in name or name == "projective":
        return torch.randint(0, layer.num_embeddings, lead)
    return torch.randn(*lead, layer.in_features, dtype=dtype)


def reference(name, layer, x):
    W = layer.dense_weight()
    if "emb" in name or name == "projective":
        return W[x]
    return torch.nn.functional.linear(x, W, layer.bias)


# -- forward vs dense ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["doped", "doped_nobias", "lowrank_linear", "lowrank_emb",
                                  "projective"])
def test_forward_matches_dense_weight(name, dtype):
    layer = layers(dtype)[name]
    for lead in [(3, 2), (1,), ()]:
        x = sample_input(name, layer, dtype, lead)
        y = layer(x)
        assert y.dtype == dtype and y.shape == (*lead, reference(name, layer, x).shape[-1])
        torch.testing.assert_close(y, reference(name, layer, x), **TOL[dtype])


@pytest.mark.parametrize("name", ["doped", "lowrank_linear", "lowrank_emb", "projective"])
def test_gradients_match_dense(name):
    layer = layers(torch.float64)[name]
    torch.manual_seed(3)
    x = sample_input(name, layer, torch.float64, (4, 3))
    dy = torch.randn(4, 3, 20 if "linear" in name or name == "doped" else 16, dtype=torch.float64)
    (layer(x) * dy).sum().backward()
    # The same parameters through plain torch ops.
    clone = {k: v.detach().clone().requires_grad_(True) for k, v in layer.named_parameters()}
    if name == "doped":
        W = sum(torch.kron(a, b) for a, b in zip(clone["A"], clone["B"]))
        rows = torch.repeat_interleave(torch.arange(20), layer.S_crow_indices.long().diff())
        W = W.index_put((rows, layer.S_col_indices.long()), clone["S_values"], accumulate=True)
        y = torch.nn.functional.linear(x, W, clone["bias"])
    elif name == "lowrank_linear":
        y = torch.nn.functional.linear(x, clone["U"] @ clone["V"], clone["bias"])
    elif name == "lowrank_emb":
        W = clone["weight"] @ clone["proj"]
        y = W[x]
    else:
        W = torch.bmm(clone["coef"].unsqueeze(1), clone["bases"][layer.labels]).squeeze(1)
        y = W[x]
    (y * dy).sum().backward()
    for k, p in layer.named_parameters():
        want = clone[k].grad
        if name == "lowrank_emb" and k == "weight":
            want[layer.padding_idx] = 0
        torch.testing.assert_close(p.grad, want, msg=k)


# -- projective ----------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3])
def test_projective_inference_path_matches_training_path(k):
    layer = ProjectiveEmbedding(50, 16, k, 4, padding_idx=2)
    x = torch.randint(0, 50, (6, 9))
    with torch.no_grad():
        fast = layer(x)
    torch.testing.assert_close(fast, layer(x))
    torch.testing.assert_close(fast, layer.dense_weight()[x])
    with pytest.raises(IndexError):
        layer(torch.tensor([50]))


def test_projective_parameter_count_and_layout():
    emb = embedding(200, 24)
    layer = ProjectiveEmbedding.from_embedding(emb, 3, 5, seed=0, n_init=2)
    n, d, k, j = 200, 24, 3, 5
    assert layer.n_params == n * j + k * j * d
    assert sum(p.numel() for p in layer.parameters()) == n * j + k * j * d
    assert layer.coef.shape == (n, j) and layer.bases.shape == (k, j, d)
    assert "labels" in dict(layer.named_buffers()) and layer.labels.dtype == torch.int64
    res = lpfast.k_subspaces(emb.weight.detach().numpy(), 3, 5, 2.0, seed=0, n_init=2)
    np.testing.assert_array_equal(layer.labels.numpy(), res.labels)
    np.testing.assert_allclose(layer.dense_weight().numpy(), res.reconstruct(), atol=1e-5)


# -- state_dict round trip -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["doped", "doped_nobias", "lowrank_linear", "lowrank_emb",
                                  "projective"])
def test_state_dict_roundtrip_exact(name, dtype):
    layer = layers(dtype)[name]
    torch.manual_seed(99)  # the fresh layer draws other random values (and S pattern)
    fresh = roundtrip_state_dict(layer, layers(dtype)[name])
    sd, sd2 = layer.state_dict(), fresh.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k], sd2[k]), k
    x = sample_input(name, layer, dtype)
    assert torch.equal(layer(x), fresh(x))


# -- fitting -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_lowrank_p2_is_truncated_svd(dtype):
    lin = linear(30, 20, dtype=dtype)
    layer = LowRankLinear.from_linear(lin, 6, p=2.0)
    W = lin.weight.detach().double()
    s = torch.linalg.svdvals(W)
    err = torch.linalg.norm(W - layer.dense_weight().double())
    torch.testing.assert_close(err, torch.sqrt((s[6:] ** 2).sum()), rtol=1e-4, atol=1e-5)
    assert layer.n_params == 6 * 50 + 20
    emb = embedding(dtype=dtype)
    e = LowRankEmbedding.from_embedding(emb, 5, p=2.0)
    E = emb.weight.detach().double()
    s = torch.linalg.svdvals(E)
    torch.testing.assert_close(torch.linalg.norm(E - e.dense_weight().double()),
                               torch.sqrt((s[5:] ** 2).sum()), rtol=1e-4, atol=1e-5)


def test_lowrank_p1_uses_lp_subspace():
    emb = embedding()
    emb.weight.data[:5] *= 30  # outlier rows
    e = LowRankEmbedding.from_embedding(emb, 4, p=1.0)
    res = lpfast.lp_subspace(emb.weight.detach().numpy(), 4, 1.0)
    np.testing.assert_allclose(e.proj.detach().numpy(), res.basis.T, atol=1e-6)
    cost = lambda V: lpfast.subspace_cost(emb.weight.detach().numpy(), V, 1.0)  # noqa: E731
    svd = LowRankEmbedding.from_embedding(emb, 4, p=2.0)
    assert cost(e.proj.detach().numpy().T) < cost(svd.proj.detach().numpy().T)
    assert e.padding_idx is None and e.fit_info.p == 1.0


def test_padding_idx_kept():
    emb = embedding(padding_idx=3)
    for layer in (LowRankEmbedding.from_embedding(emb, 4), ProjectiveEmbedding.from_embedding(emb, 2, 3, seed=0)):
        assert layer.padding_idx == 3
        layer(torch.tensor([3, 3, 1])).sum().backward()
        g = layer.weight.grad if isinstance(layer, LowRankEmbedding) else layer.coef.grad
        assert torch.all(g[3] == 0) and torch.any(g[1] != 0)


# -- bad input -----------------------------------------------------------------------------

def test_bad_input_names_argument():
    with pytest.raises(ValueError, match="a_shape"):
        DopedKroneckerLinear(24, 20, (4, 5), (5, 4), 0.1)
    with pytest.raises(ValueError, match="density"):
        DopedKroneckerLinear(24, 20, (4, 6), (5, 4), 1.5)
    with pytest.raises(ValueError, match="cmr"):
        DopedKroneckerLinear(24, 20, (4, 6), (5, 4), 0.1, cmr=1.0)
    with pytest.raises(TypeError, match="dtype"):
        LowRankLinear(4, 4, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="device"):
        LowRankLinear(4, 4, 2, device="meta")
    with pytest.raises(TypeError, match="linear"):
        DopedKroneckerLinear.from_linear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="emb"):
        LowRankEmbedding.from_embedding(linear(), 2)
    with pytest.raises(ValueError, match="emb"):
        LowRankEmbedding.from_embedding(embedding(max_norm=1.0), 2)
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear.from_linear(linear(), 0)
    with pytest.raises(ValueError, match="p"):
        LowRankEmbedding.from_embedding(embedding(), 2, p=0.5)
    with pytest.raises(ValueError, match="a_shape, b_shape"):
        DopedKroneckerLinear.from_linear(linear(), (4, 6))
    with pytest.raises(ValueError, match="dim"):
        ProjectiveEmbedding.from_embedding(embedding(d=16), 2, 16)
    layer = DopedKroneckerLinear(24, 20, (4, 6), (5, 4), 0.1)
    with pytest.raises(TypeError, match="input"):
        layer(torch.randn(2, 24, dtype=torch.float64))
    with pytest.raises(ValueError, match="input"):
        layer(torch.randn(2, 23))
    with pytest.raises(TypeError, match="input"):
        LowRankEmbedding(10, 4, 2)(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="target"):
        DensitySchedule(0.1, 0.2, 0, 10)
    with pytest.raises(ValueError, match="end"):
        DensitySchedule(1.0, 0.2, 10, 10)
    with pytest.raises(ValueError, match="layers"):
        SparsityAnnealer(torch.nn.Linear(2, 2), DensitySchedule(1.0, 0.1, 0, 10))
