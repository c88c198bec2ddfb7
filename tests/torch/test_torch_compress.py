"""lpfast.torch.compress with the fixed-kind methods (lowrank, projective, doped_kron).

Layout:
  small models       rules by pattern, every method, report numbers recomputed exactly
  tiny BERT          transformers.BertConfig (no download): word embeddings + one FFN layer
  rules              short form parsing, registry (the hook for a planner), bad rules

The "auto" method is in test_torch_compress_auto.py, the command line in test_cli.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lpfast.torch as lt
from lpfast.torch import compress, parse_rule
from lpfast.torch.compression.compress import METHODS, register_method

from _torch_helpers import DTYPES, Tiny, check_report_exact, n_params, tiny_bert


# -- small models --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_compress_every_method(dtype):
    model = Tiny(dtype)
    originals = dict(model.named_modules())
    before = n_params(model)
    idx = torch.randint(0, 300, (4, 7))
    lines = []
    report = compress(model, {
        "emb": {"method": "projective", "ratio": 3, "n_subspaces": 3, "n_init": 2},
        "body.0": {"method": "doped_kron", "ratio": 3, "a_shape": (6, 4), "b_shape": (8, 8)},
        "body.*": {"method": "lowrank", "ratio": 2, "p": 2.0},
    }, progress=lines.append)
    assert isinstance(model.emb, lt.ProjectiveEmbedding)
    assert isinstance(model.body[0], lt.DopedKroneckerLinear)
    assert isinstance(model.body[2], lt.LowRankLinear)
    assert isinstance(model.head, nn.Linear)  # no rule
    assert [r.name for r in report.layers] == ["emb", "body.0", "body.2"]
    assert [r.method for r in report.layers] == ["projective", "doped_kron", "lowrank"]
    for row, ratio in zip(report.layers, (3, 3, 2)):
        assert row.params_after <= row.params_before / ratio
    assert report.model_params_before == before
    check_report_exact(report, model, originals)
    assert len(lines) == 6 and lines[0].startswith("[1/3] emb")
    y = model(idx)
    assert y.shape == (4, 10) and y.dtype == dtype and torch.isfinite(y).all()
    y.sum().backward()  # still trainable
    assert json.loads(json.dumps(report.to_dict()))["params_after"] == report.params_after
    assert "model:" in str(report)


def test_lowrank_ratio_picks_largest_rank():
    model = Tiny()
    report = compress(model, {"body.0": "lowrank:2.5:p=1.0"})
    # Linear(32, 48) + bias: 1584 params, budget 633.6 -> rank floor((633.6 - 48) / 80) = 7.
    assert model.body[0].rank == 7 and report.layers[0].params_after == 7 * 80 + 48


def test_tied_weights_refused():
    model = Tiny()
    model.head2 = nn.Linear(300, 32, bias=False)
    model.dec = nn.Linear(32, 300, bias=False)
    model.dec.weight = model.emb.weight  # tied (shape (300, 32) both)
    with pytest.raises(ValueError, match="tied"):
        compress(model, {"emb": "lowrank:2"})
    assert isinstance(model.emb, nn.Embedding)


# -- tiny BERT -----------------------------------------------------------------------------

@pytest.mark.parametrize("emb_method", ["lowrank", "projective"])
def test_compress_tiny_bert(emb_method):
    model = tiny_bert()
    originals = dict(model.named_modules())
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        y0 = model(ids).last_hidden_state
    emb_rule = ({"method": "lowrank", "ratio": 4, "p": 1.0} if emb_method == "lowrank" else
                {"method": "projective", "ratio": 4, "n_subspaces": 4, "n_init": 2})
    report = compress(model, {
        "embeddings.word_embeddings": emb_rule,
        "encoder.layer.0.intermediate.dense": {"method": "doped_kron", "ratio": 4,
                                               "a_shape": (16, 8), "b_shape": (16, 8)},
    })
    assert [r.name for r in report.layers] == ["embeddings.word_embeddings",
                                               "encoder.layer.0.intermediate.dense"]
    assert report.layers[0].params_before == 1000 * 64
    assert report.layers[1].params_before == 64 * 256 + 256
    for row in report.layers:
        assert row.params_after <= row.params_before / 4
        assert 0 < row.relative_error < 1
    check_report_exact(report, model, originals)
    with torch.no_grad():
        y = model(ids).last_hidden_state
    assert y.shape == y0.shape and torch.isfinite(y).all()


# -- rules ---------------------------------------------------------------------------------

def test_parse_rule():
    assert parse_rule("*.word_embeddings=lowrank:4") == ("*.word_embeddings",
                                                        {"method": "lowrank", "ratio": 4})
    assert parse_rule("a.b=doped_kron:2.5:a_shape=16x8,b_shape=4x4,rank=2,cmr=0.1") == (
        "a.b", {"method": "doped_kron", "ratio": 2.5, "a_shape": (16, 8), "b_shape": (4, 4),
                "rank": 2, "cmr": 0.1})
    assert parse_rule("x=lowrank::rank=3") == ("x", {"method": "lowrank", "rank": 3})
    for bad in ["nomethod", "=lowrank:4", "x=lowrank:four", "x=lowrank:4:p"]:
        with pytest.raises(ValueError, match="rule"):
            parse_rule(bad)


def test_registered_method_plugs_in():
    """The hook a planner ("auto") uses: a method choosing among the built-in ones."""
    seen = []

    def auto(name, module, spec):
        seen.append(name)
        method = "lowrank" if isinstance(module, nn.Embedding) else "doped_kron"
        return METHODS[method](name, module, {"method": method, "ratio": spec["ratio"]})

    register_method("test_auto", auto)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_method("test_auto", auto)
        model = Tiny()
        originals = dict(model.named_modules())
        report = compress(model, {"emb": {"method": "test_auto", "ratio": 2},
                                  "body.2": {"method": "test_auto", "ratio": 2}})
        assert seen == ["emb", "body.2"]
        assert isinstance(model.body[2], lt.DopedKroneckerLinear)
        check_report_exact(report, model, originals)
    finally:
        METHODS.pop("test_auto")


def test_bad_rules_name_the_problem():
    model = Tiny()
    with pytest.raises(ValueError, match="matches no"):
        compress(model, {"nothing.here": "lowrank:2"})
    assert compress(model, {"nothing.here": "lowrank:2"}, strict=False).layers == []
    with pytest.raises(ValueError, match="method"):
        compress(model, {"emb": {"method": "magic", "ratio": 2}})
    with pytest.raises(TypeError, match="projective"):
        compress(model, {"body.0": "projective:2"})
    with pytest.raises(TypeError, match="doped_kron"):
        compress(model, {"emb": "doped_kron:2"})
    with pytest.raises(ValueError, match="ratio"):
        compress(model, {"emb": "lowrank:0.5"})
    with pytest.raises(ValueError, match="ratio"):
        compress(model, {"head": "lowrank:1000"})
    with pytest.raises(ValueError, match="unknown option"):
        compress(model, {"emb": {"method": "lowrank", "ratio": 2, "colour": 1}})
    with pytest.raises(ValueError, match="exactly one"):
        compress(model, {"emb": {"method": "lowrank", "ratio": 2, "rank": 3}})
    with pytest.raises(TypeError, match="model"):
        compress("model", {"emb": "lowrank:2"})
    with pytest.raises(TypeError, match="rules"):
        compress(model, 3)
    assert isinstance(model.emb, nn.Embedding) and isinstance(model.head, nn.Linear)
