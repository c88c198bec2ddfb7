"""lpfast.torch.compress with method "auto": the planner picks each layer's fit.

Layout:
  models          tiny BERT word embeddings (usage-weighted), a Linear with bias, the layer
                  choice, the sweep over more ratios
  options         counts (array, tensor, .npy, .pt) or weights, bad options
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import lpfast
import lpfast.torch as lt
from lpfast.torch import RowDopedEmbedding, RowDopedLinear, compress
from lpfast.torch.compression.compress import METHODS

from _torch_helpers import Tiny, check_report_exact, tiny_bert, zipf_counts


# -- models --------------------------------------------------------------------------------

def test_auto_compresses_tiny_bert_word_embeddings():
    model = tiny_bert()
    originals = dict(model.named_modules())
    ids = torch.randint(0, 1000, (2, 12))
    counts = torch.from_numpy(zipf_counts(1000))
    lines: list[str] = []
    report = compress(model, {"embeddings.word_embeddings": {
        "method": "auto", "ratio": 8, "counts": counts,
        "candidates": "svd/lp:1/projective:2"}}, progress=lines.append)
    row = report.layers[0]
    plan = row.plan
    assert isinstance(plan, lpfast.Plan) and plan.budget == 1000 * 64 // 8
    assert [r["candidate"] for r in plan.rows if not r["doped"]] != []
    new = model.embeddings.word_embeddings
    best = plan.best
    # Weighted by Zipf usage, doping wins here; the layer is the plan's best fit exactly.
    assert best.n_exact > 0 and isinstance(new, RowDopedEmbedding)
    assert new.padding_idx == 0 and new.n_params == best.n_params == row.stored_after
    assert row.stored_after <= row.params_before / 8
    assert row.params_after == new.n_values and row.indices_after == new.n_indices
    np.testing.assert_array_equal(new.dense_weight().numpy(), best.reconstruct())
    check_report_exact(report, model, originals)
    w = lpfast.usage_weights(counts)
    E = originals["embeddings.word_embeddings"].weight.detach().double().numpy()
    err = np.sqrt((w * ((E - best.reconstruct()) ** 2).sum(1)).sum() / (w * (E**2).sum(1)).sum())
    assert err == pytest.approx(plan.best_row["error"], rel=1e-4)
    # progress: every candidate as it finishes, then the choice; the report prints the plan
    assert sum("plan [" in line for line in lines) == len(plan.rows) == 6
    assert any(line.strip().startswith("plan: best") for line in lines)
    assert "compression plan for a 1000 x 64 matrix" in str(report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["layers"][0]["plan"]["rows"][0]["candidate"] == plan.best_row["candidate"]
    assert "<Tensor (1000,)>" in lines[0]
    with torch.no_grad():
        y = model(ids).last_hidden_state
    assert y.shape == (2, 12, 64) and torch.isfinite(y).all()


def test_auto_linear_with_bias_and_layer_choice():
    model = Tiny()
    originals = dict(model.named_modules())
    report = compress(model, {
        "body.0": "auto:4:candidates=svd,doping=false",  # undoped low rank -> LowRankLinear
        "emb": "auto:4:candidates=projective:2,doping=false,seed=1",  # -> ProjectiveEmbedding
        "body.2": "auto:3:candidates=svd/lp:1.5,layer=row_doped,doping=false",
    })
    assert isinstance(model.body[0], lt.LowRankLinear)
    assert isinstance(model.emb, lt.ProjectiveEmbedding)
    assert isinstance(model.body[2], RowDopedLinear) and model.body[2].n_exact == 0
    check_report_exact(report, model, originals)
    rows = {r.name: r for r in report.layers}
    for name, ratio in [("body.0", 4), ("emb", 4), ("body.2", 3)]:
        r = rows[name]
        assert r.stored_after <= r.params_before / ratio, name
        assert r.stored_after == r.plan.best.n_params + (32 if name == "body.2" else
                                                          48 if name == "body.0" else 0)
        new = model.get_submodule(name)
        np.testing.assert_allclose(new.dense_weight().numpy(), r.plan.best.reconstruct(),
                                   rtol=1e-5, atol=1e-6)
    # Linear(32, 48) with bias: weight budget floor(1584 / 4 - 48) = 348 (bias copied)
    assert rows["body.0"].plan.budget == 348
    assert torch.equal(model.body[0].bias, originals["body.0"].bias)
    assert rows["emb"].indices_after == 300  # the labels
    assert model(torch.randint(0, 300, (2, 5))).shape == (2, 10)


def test_auto_sweep():
    model = Tiny()
    report = compress(model, {"emb": "auto:4:candidates=svd/lp:1,sweep=2/8/4"})
    row = report.layers[0]
    assert [p.ratio for p in row.sweep] == [2, 4, 8] and row.sweep[1] is row.plan
    assert [p["ratio"] for p in json.loads(json.dumps(row.to_dict()))["sweep"]] == [2, 4, 8]
    with pytest.raises(ValueError, match="sweep"):
        compress(Tiny(), {"emb": "auto:4:sweep=0.5"})


# -- options -------------------------------------------------------------------------------

def test_auto_weights_options(tmp_path):
    counts = zipf_counts(300)
    np.save(tmp_path / "c.npy", counts)
    torch.save(torch.from_numpy(counts), tmp_path / "c.pt")
    plans = []
    for opt in [{"counts": str(tmp_path / "c.npy")}, {"counts": tmp_path / "c.pt"},
                {"counts": counts.tolist()}, {"weights": lpfast.usage_weights(counts)}]:
        model = Tiny()
        rep = compress(model, {"emb": dict(method="auto", ratio=6, candidates=["svd"], **opt)})
        plans.append(rep.layers[0].plan)
    assert all(p.rows == plans[0].rows or _same_rows(p, plans[0]) for p in plans)
    model = Tiny()
    with pytest.raises(ValueError, match=r"\['counts'\].*shape \(300,\)"):
        compress(model, {"emb": {"method": "auto", "ratio": 4, "counts": counts[:-1]}})
    with pytest.raises(ValueError, match="no such file"):
        compress(model, {"emb": {"method": "auto", "ratio": 4, "counts": "nope.npy"}})
    with pytest.raises(ValueError, match="not both"):
        compress(model, {"emb": {"method": "auto", "ratio": 4, "counts": counts, "weights": counts}})
    with pytest.raises(ValueError, match="power"):
        compress(model, {"emb": "auto:4:power=0.5"})
    with pytest.raises(ValueError, match="counts"):
        compress(model, {"emb": {"method": "auto", "ratio": 4, "counts": -counts}})
    with pytest.raises(ValueError, match="unknown option"):
        compress(model, {"emb": "auto:4:colour=red"})
    with pytest.raises(ValueError, match="layer"):
        compress(model, {"emb": "auto:4:layer=dense"})
    with pytest.raises(ValueError, match="doping"):
        compress(model, {"emb": "auto:4:doping=maybe"})
    with pytest.raises(ValueError, match="ratio"):
        compress(model, {"emb": "auto:5000"})
    with pytest.raises(ValueError, match="candidates"):
        compress(model, {"emb": "auto:4:candidates=magic"})
    with pytest.raises(TypeError, match="auto"):
        METHODS["auto"]("c", nn.Conv1d(2, 2, 1), {"method": "auto", "ratio": 2})
    assert isinstance(model.emb, nn.Embedding)


def _same_rows(a, b) -> bool:
    keys = ("candidate", "rank", "n_exact", "n_params")
    return [tuple(r[k] for k in keys) for r in a.rows] == [tuple(r[k] for k in keys) for r in b.rows] \
        and np.allclose([r["error"] for r in a.rows], [r["error"] for r in b.rows], rtol=1e-6)
