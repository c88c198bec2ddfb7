"""lpfast.torch.distill: compressed layers trained back towards the original model.

Small synthetic models: an MLP (Linear/GELU) with correlated inputs, compressed with
``compress(copy, {"0": "lowrank:4", "2": "doped_kron:2"})``, and a tiny BertModel built from a
config (no download). Errors are measured on held-out batches with ``output_error``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from _torch_helpers import (SMALL_BERT, bert_batches, one_thread,  # noqa: F401 (a fixture)
                            tiny_bert)
from lpfast.torch import (DopedKroneckerLinear, calibrate, compress, distill,
                          output_error)

RULES = {"0": "lowrank:4", "2": "doped_kron:2"}

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(),
                         nn.Linear(32, 8)).to(dtype)


def data(n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(32, 32, generator=torch.Generator().manual_seed(99), dtype=dtype)
    return [torch.randn(64, 32, generator=g, dtype=dtype) @ mix for _ in range(n)]


def compressed_copy(model, rules=RULES):
    c = copy.deepcopy(model)
    compress(c, rules)
    return c


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["layer", "end_to_end"])
def test_distill_lowers_held_out_error(mode):
    model = mlp()
    batches, held = data(8, 1), data(4, 2)
    c = compressed_copy(model)
    c.train()
    grads = {n: p.requires_grad for n, p in c.named_parameters()}
    original_state = params(model)
    before = output_error(c, model, held)
    report = distill(c, model, batches, mode=mode, progress=False,
                     steps=300 if mode == "layer" else 150)
    after = output_error(c, model, held)
    assert after < 0.9 * before, (before, after, str(report))
    assert report.output_error_after < report.output_error_before
    assert report.mode == mode and report.stopped_by == "steps" and report.seconds > 0
    assert [r.name for r in report.layers] == ["0", "2"]
    assert [r.kind for r in report.layers] == ["LowRankLinear", "DopedKroneckerLinear"]
    if mode == "layer":
        assert report.steps == 600 and all(r.steps == 300 for r in report.layers)
        for r in report.layers:
            assert r.rows == 8 * 64 and r.error_after < r.error_before and not r.restored
    else:
        assert report.steps == 150
    assert not any(m.training for m in c.modules())  # left in eval mode
    assert {n: p.requires_grad for n, p in c.named_parameters()} == grads
    assert all(torch.equal(v, original_state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert "distill" in str(report) and report.to_dict()["layers"][0]["name"] == "0"


def test_layerwise_reaches_the_whitened_optimum():
    """A rank-r layer with a free bias cannot beat the whitened SVD: with Σ the centred input
    covariance (from calibrate), the least relative MSE is Σ_{i>r} s_i(W Σ^½)² / E‖y‖²."""
    model = mlp(torch.float64)
    batches = data(8, 1, torch.float64)
    c = compressed_copy(model, {"0": "lowrank:4"})
    rank = c[0].rank
    report = distill(c, model, batches, progress=False)
    stats = calibrate(model, batches, "0", progress=False)["0"]
    mu = stats.mean
    cov = stats.input_gram - torch.outer(mu, mu)
    W, b = model[0].weight.detach(), model[0].bias.detach()
    s = torch.linalg.svdvals(W @ torch.linalg.cholesky(cov))
    y2 = torch.trace(W @ stats.input_gram @ W.T) + 2 * b @ W @ mu + b @ b  # E‖W x + b‖²
    optimum = float((s[rank:] ** 2).sum() / y2)
    r = report.layers[0]
    assert r.error_before > 1.2 * optimum
    assert optimum * (1 - 1e-6) <= r.error_after <= 1.02 * optimum, (optimum, r)


def test_state_dict_round_trip_after_annealing():
    model = mlp()
    c = compressed_copy(model)
    nnz0 = c[2].nnz
    target = 0.5 * c[2].density
    report = distill(c, model, data(4, 1), progress=False, steps=40, target_density=target)
    r = report.layers[1]
    assert c[2].S_mask is None and c[2].nnz == round(target * 64 * 32) < nnz0  # compacted
    assert r.density_before > r.density_after == pytest.approx(target)
    fresh = compressed_copy(model)
    fresh.load_state_dict(c.state_dict())
    assert c.state_dict().keys() == fresh.state_dict().keys()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in c.state_dict().items())
    x = data(1, 5)[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), c(x))


@pytest.mark.parametrize("mode", ["layer", "end_to_end"])
def test_deterministic_with_a_seed(mode):
    model = mlp()
    batches = data(4, 1)
    runs = []
    for seed in (3, 3, 4):
        c = compressed_copy(model)
        c[2].cmr = 0.2  # co-matrix dropout draws from torch's RNG, seeded by distill
        distill(c, model, batches, mode=mode, progress=False, steps=25, seed=seed, max_rows=200)
        runs.append(params(c))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_global_rng_restored():
    model = mlp()
    c = compressed_copy(model)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    distill(c, model, data(2, 1), progress=False, steps=3, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_worse_training_is_undone():
    model = mlp()
    c = compressed_copy(model)
    before = params(c)
    report = distill(c, model, data(4, 1), progress=False, steps=10, lr=50.0)
    assert all(r.restored for r in report.layers)
    assert all(torch.equal(v, before[k]) for k, v in c.state_dict().items())
    assert [r.error_after for r in report.layers] == [r.error_before for r in report.layers]


def test_budgets():
    model = mlp()
    report = distill(compressed_copy(model), model, data(2, 1), progress=False, time_budget=0)
    assert report.steps == 0 and report.stopped_by == "time"
    assert [r.error_after for r in report.layers] == [r.error_before for r in report.layers]
    report = distill(compressed_copy(model), model, data(2, 1), progress=False, time_budget=0.5,
                     mode="end_to_end")
    assert report.steps > 0 and report.stopped_by == "time"
    report = distill(compressed_copy(model), model, data(2, 1), progress=False, steps=0)
    assert report.steps == 0 and report.stopped_by == "steps"


def test_explicit_layers_and_progress(capsys):
    model = mlp()
    c = compressed_copy(model)
    report = distill(c, model, data(2, 1), layers=["2"], steps=5)
    assert [r.name for r in report.layers] == ["2"]
    assert "distill" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["layer", "end_to_end"])
def test_tiny_bert(mode):
    model = tiny_bert(layers=1, **SMALL_BERT)
    c = compressed_copy(model, {"encoder.layer.0.intermediate.dense": "lowrank:4",
                                "encoder.layer.0.output.dense": "lowrank:4"})
    held = bert_batches(2, 7)
    before = output_error(c, model, held)
    report = distill(c, model, bert_batches(6, 1), mode=mode, progress=False, steps=60)
    assert output_error(c, model, held) < before
    assert len(report.layers) == 2 and report.layers[0].rows == 6 * 4 * 12
    fresh = compressed_copy(model, {"encoder.layer.0.intermediate.dense": "lowrank:4",
                                    "encoder.layer.0.output.dense": "lowrank:4"})
    fresh.load_state_dict(c.state_dict())
    with torch.no_grad():
        b = held[0]
        assert torch.equal(fresh(**b).last_hidden_state, c(**b).last_hidden_state)


@pytest.mark.parametrize("rules", [{"0": "lowrank:2", "1": "auto:2"},
                                   {"0": "projective:2:n_subspaces=2", "3": "auto:2"}])
def test_embeddings_and_planner_layers(rules):
    """Whatever compress builds (low-rank and projective embeddings fed token ids, the
    planner's row-doped or low-rank Linears) trains in both modes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(60, 16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 60, (8, 10), generator=g) for _ in range(6)]
    held = [torch.randint(0, 60, (8, 10), generator=g) for _ in range(3)]
    for mode in ("layer", "end_to_end"):
        c = compressed_copy(model, rules)
        before = output_error(c, model, held)
        report = distill(c, model, batches, mode=mode, progress=False, steps=60)
        assert output_error(c, model, held) < before, str(report)
        assert report.layers[0].rows == 6 * 8 * 10  # token ids, one row each


# -- bad input ---------------------------------------------------------------------------------

def test_bad_input():
    model = mlp()
    c = compressed_copy(model)
    batches = data(2, 1)
    with pytest.raises(ValueError, match="no compressed layer found"):
        distill(copy.deepcopy(model), model, batches, progress=False)
    with pytest.raises(ValueError, match="original model itself"):
        distill(model, model, batches, progress=False)
    with pytest.raises(ValueError, match="batches: empty"):
        distill(c, model, [], progress=False)
    with pytest.raises(RuntimeError, match=r"batches\[1\]: the model failed"):
        distill(c, model, [batches[0], torch.randn(3, 31)], progress=False)
    with pytest.raises(ValueError, match="'nope' is not a submodule"):
        distill(c, model, batches, layers=["nope"], progress=False)
    with pytest.raises(TypeError, match="'1' is a GELU"):
        distill(c, model, batches, layers=["1"], progress=False)
    with pytest.raises(ValueError, match="mode"):
        distill(c, model, batches, mode="global", progress=False)
    with pytest.raises(ValueError, match="steps"):
        distill(c, model, batches, steps=-1, progress=False)
    with pytest.raises(ValueError, match="time_budget"):
        distill(c, model, batches, time_budget=-1.0, progress=False)
    with pytest.raises(TypeError, match="output_fn"):
        distill(c, model, batches, output_fn=lambda out: out.tolist(), progress=False)
    with pytest.raises(TypeError, match="compressed"):
        distill("c", model, batches, progress=False)
    with pytest.raises(ValueError, match="target_density"):
        distill(c, model, batches, target_density=2.0, progress=False)
    with pytest.raises(ValueError, match="seed"):  # as the NumPy API refuses negative seeds
        distill(c, model, batches, seed=-1, progress=False)
    with pytest.raises(TypeError, match="seed"):
        distill(c, model, batches, seed=1.5, progress=False)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert isinstance(c[2], DopedKroneckerLinear)


def test_pruned_ffn_pairs_end_to_end_only():
    # prune_ffn changes the hidden width: the pair has no per-layer target (errors are NaN),
    # end-to-end training still lowers the held-out output error, and layer mode says why not
    from lpfast.torch import ffn_pairs, prune_ffn

    model = tiny_bert(**SMALL_BERT)
    original = copy.deepcopy(model)
    batches, held = bert_batches(4, seed=0), bert_batches(2, seed=1)
    pairs = ffn_pairs(model)
    prune_ffn(model, pairs, calibrate(model, batches, list(pairs.values()), progress=False),
              keep=0.5)
    names = [n for pair in pairs.items() for n in pair]
    before = output_error(model, original, held)
    report = distill(model, original, batches, mode="end_to_end", layers=names, steps=30,
                     progress=False)
    assert all(math.isnan(r.error_before) and math.isnan(r.error_after) for r in report.layers)
    assert report.output_error_after < report.output_error_before
    assert output_error(model, original, held) < before
    with pytest.raises(ValueError, match="widths differ.*end_to_end"):
        distill(model, original, batches, mode="layer", layers=names, steps=2, progress=False)
