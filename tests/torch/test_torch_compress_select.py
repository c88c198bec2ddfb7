"""lpfast.torch.compress with calibration, and "auto" choosing per nn.Linear by error and speed.

Layout:
  data-aware rules   lowrank / lowrank_sparse / doped_kron with calibration= against the same
                     rules without, err_C recomputed from the layers' outputs
  selection          the chosen candidate against every candidate refit by its own rule,
                     with fixed latencies from an injected timer (never timed assertions)
  bad input          calibration entries, Gram sizes, targets, timers
  round trip         state_dict of the compressed model, the report's JSON and table
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from torch import nn

import lpfast.torch as lt
from lpfast.torch import compress, parse_rule
from lpfast.torch.compression._timing import interleaved_latency
from lpfast.torch.compression.frontier import frontier

from _torch_helpers import DTYPES, n_params

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

KINDS = {"lowrank": lt.LowRankLinear, "lowrank_sparse": lt.LowRankSparseLinear,
         "doped_kron": lt.DopedKroneckerLinear}


class Net(nn.Module):
    """Linear(32 -> 64), ReLU, Linear(64 -> 32), and an unused-by-rules head (32 -> 8)."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(32, 64, dtype=dtype)
        self.b = nn.Linear(64, 32, dtype=dtype)
        self.head = nn.Linear(32, 8, dtype=dtype)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))))


def batches(dtype=torch.float64, n=4, seed=0) -> list[torch.Tensor]:
    """Anisotropic inputs: scales from 1 to 1e-2 on rotated features, two outliers x30."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    mix = (Q * torch.logspace(0, -2, 32, dtype=torch.float64)).T
    out = []
    for _ in range(n):
        x = torch.randn(48, 32, generator=g, dtype=torch.float64) @ mix
        x[:, :2] *= 30.0
        out.append(x.to(dtype))
    return out


def layer_inputs(model: Net, data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rows each Linear of the (original) model sees, float64: a dense recomputation."""
    x = torch.cat(data).double()
    with torch.no_grad():
        h = torch.relu(x @ model.a.weight.double().T + model.a.bias.double())
    return {"a": x, "b": h}


def err_c(old: nn.Linear, new: nn.Module, X: torch.Tensor) -> float:
    """‖X (W − Ŵ)ᵀ‖² / ‖X Wᵀ‖² from the layers' outputs (biases cancel)."""
    with torch.no_grad():
        W = old.weight.double()
        Y = X @ W.T
        return float(((new.double()(X) - old.double()(X)) ** 2).sum() / (Y ** 2).sum())


def fixed_timer(latency_of):
    """A timer returning ``latency_of(layer)`` seconds for each layer (dense first)."""
    calls = []

    def timer(layers, x):
        assert isinstance(layers[0], nn.Linear) and x.shape[1] == layers[0].in_features
        calls.append(len(layers))
        return [latency_of(m) for m in layers]

    timer.calls = calls
    return timer


def by_kind(dense=1.0, lowrank=0.5, lowrank_sparse=2.0, doped_kron=0.8):
    table = {nn.Linear: dense, lt.LowRankLinear: lowrank, lt.LowRankSparseLinear: lowrank_sparse,
             lt.DopedKroneckerLinear: doped_kron}
    return fixed_timer(lambda m: table[type(m)])


def copy_of(model: Net) -> Net:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


# -- data-aware rules -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, rule", [
    *((d, r) for d in DTYPES for r in ("lowrank:3:p=2", "lowrank_sparse:3", "doped_kron:3")),
    (torch.float64, "lowrank_sparse::rank=2,density=0.1")])
def test_calibrated_rules_beat_weights_only_on_err_c(dtype, rule):
    model = Net(dtype)
    data = batches(dtype)
    X = layer_inputs(model, data)
    cal = lt.calibrate(model, data, ["a", "b"], progress=False)
    plain, aware = copy_of(model), copy_of(model)
    rep0 = compress(plain, {"a": rule, "b": rule})
    rep1 = compress(aware, {"a": rule, "b": rule}, calibration=cal)
    method = rule.partition(":")[0]
    for name in ("a", "b"):
        old = getattr(model, name)
        w_only, data_aware = getattr(plain, name), getattr(aware, name)
        assert type(data_aware) is KINDS[method] and data_aware.bias.dtype == dtype
        assert n_params(data_aware) == n_params(w_only)  # the same structure, refit under C
        e0, e1 = err_c(old, w_only, X[name]), err_c(old, data_aware, X[name])
        assert e1 <= e0 * (1 + 1e-6)
        row = next(r for r in rep1.layers if r.name == name)
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        assert row.output_error == pytest.approx(e1, rel=tol, abs=tol)
        assert next(r for r in rep0.layers if r.name == name).output_error is None
        assert torch.equal(data_aware.bias, old.bias)
    if method == "lowrank":  # whitening wins clearly on these inputs (two outlier features)
        assert err_c(model.a, aware.a, X["a"]) < 0.9 * err_c(model.a, plain.a, X["a"])


def test_calibration_forms_agree():
    """A Calibration, its saved file, a mapping of LayerStats and a mapping of Gram tensors
    give the same fit; per-feature second moments (mode "scale") give C = diag(s)."""
    model = Net()
    data = batches()
    cal = lt.calibrate(model, data, ["a", "b"], progress=False)
    ref = copy_of(model)
    compress(ref, {"a": "lowrank:3:p=2", "b": "lowrank:3:p=2"}, calibration=cal)
    grams = {n: cal[n].input_gram for n in cal}
    for form in (dict(cal.items()), grams, {n: g.numpy() for n, g in grams.items()}):
        m = copy_of(model)
        compress(m, {"a": "lowrank:3:p=2", "b": "lowrank:3:p=2"}, calibration=form)
        for name in ("a", "b"):
            assert torch.equal(getattr(m, name).dense_weight(), getattr(ref, name).dense_weight())
    scale = lt.calibrate(model, data, ["a", "b"], mode="scale", progress=False)
    m = copy_of(model)
    rep = compress(m, {"a": "lowrank:3:p=2"}, calibration={"a": scale["a"]})
    X = layer_inputs(model, data)["a"]
    D = (model.a.weight.detach() - m.a.dense_weight()).double()
    s = (X ** 2).mean(0)
    want = float(((D ** 2) * s).sum() / ((model.a.weight.detach().double() ** 2) * s).sum())
    assert rep.layers[0].output_error == pytest.approx(want, rel=1e-9)


def test_layer_without_statistics_is_fit_on_weights():
    model, other = Net(), Net()
    data = batches()
    cal = lt.calibrate(model, data, ["a"], progress=False)
    compress(model, {"a": "lowrank:3:p=2", "b": "lowrank:3:p=2"}, calibration=cal)
    compress(other, {"a": "lowrank:3:p=2", "b": "lowrank:3:p=2"})
    assert torch.equal(model.b.dense_weight(), other.b.dense_weight())
    assert not torch.equal(model.a.dense_weight(), other.a.dense_weight())


# -- selection --------------------------------------------------------------------------------

def refit_errors(model: Net, name: str, cal, ratios, methods=tuple(KINDS)) -> dict:
    """Each candidate refit by its own rule on a fresh copy: (method, ratio) -> (err, params)."""
    out = {}
    X = layer_inputs(model, batches())[name]
    for ratio in ratios:
        for method in methods:
            m = copy_of(model)
            opts = ":p=2" if method == "lowrank" else ""
            try:
                compress(m, {name: f"{method}:{ratio}{opts}"}, calibration=None if cal is None
                         else {name: cal[name]})
            except ValueError:
                continue
            new = getattr(m, name)
            W = getattr(model, name).weight.detach().double()
            err = err_c(getattr(model, name), new, X) if cal is not None else \
                float(((W - new.dense_weight().double()) ** 2).sum() / (W ** 2).sum())
            out[(method, float(ratio))] = (err, n_params(new))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_ratio_target_picks_lowest_error_among_not_slower(dtype):
    model = Net(dtype)
    data = batches(dtype)
    cal = lt.calibrate(model, data, ["b"], progress=False)
    expected = refit_errors(model, "b", cal, [2])
    timer = by_kind()  # lowrank 2x, doped_kron 1.25x, lowrank_sparse 0.5x the dense speed
    lines = []
    rep = compress(model, {"b": "auto:2"}, calibration=cal, timer=timer, progress=lines.append)
    sel = rep.layers[0].selection
    assert timer.calls == [4]  # dense + three candidates, timed together
    assert [c.method for c in sel.candidates] == list(KINDS)
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for c in sel.candidates:
        err, params = expected[(c.method, 2.0)]
        assert c.error == pytest.approx(err, rel=tol, abs=tol) and c.n_params == params
        assert c.n_params <= n_params(Net().b) / 2
    assert {c.method: c.speedup for c in sel.candidates} == \
        {"lowrank": 2.0, "lowrank_sparse": 0.5, "doped_kron": 1.25}
    ok = [c for c in sel.candidates if c.method != "lowrank_sparse"]
    best = min(ok, key=lambda c: c.error)
    assert sel.chosen is best and sum(c.chosen for c in sel.candidates) == 1
    assert type(model.b) is KINDS[best.method] and sel.fallback is None
    assert rep.layers[0].output_error == pytest.approx(best.error, rel=tol, abs=tol)
    assert sel.error == "gram" and sel.rows == 16 and sel.target == {"ratio": 2.0}
    assert any(line.strip().startswith("chose") for line in lines)
    # Every candidate as fast: lowest error overall (here lowrank_sparse: a share of S helps).
    m = Net(dtype)
    rep = compress(m, {"b": "auto:2"}, calibration=cal, timer=by_kind(lowrank_sparse=0.9))
    sel = rep.layers[0].selection
    assert sel.chosen is min(sel.candidates, key=lambda c: c.error)


def test_speedup_target_over_budgets():
    model = Net()
    cal = lt.calibrate(model, batches(), ["a"], progress=False)
    dense = n_params(model.a)
    timer = fixed_timer(lambda m: n_params(m) / dense)  # speed-up = the parameter ratio
    rep = compress(model, {"a": "auto:speedup=2.5,ratios=2/5"}, calibration=cal, timer=timer)
    sel = rep.layers[0].selection
    expected = refit_errors(Net(), "a", cal, [2, 5])
    assert {(c.method, c.ratio) for c in sel.candidates} == set(expected)
    for c in sel.candidates:
        assert c.error == pytest.approx(expected[(c.method, c.ratio)][0], rel=1e-9, abs=1e-12)
        assert c.admissible == (c.speedup >= 2.5)
    ok = [c for c in sel.candidates if c.speedup >= 2.5]
    assert ok and sel.chosen is min(ok, key=lambda c: c.error) and sel.chosen.ratio == 5
    # ratio and speedup together: that ratio and the larger ones only.
    m = Net()
    rep = compress(m, {"a": "auto:4:speedup=1.0,ratios=2/8,candidates=lowrank"},
                   calibration=cal, timer=timer)
    assert sorted({c.ratio for c in rep.layers[0].selection.candidates}) == [4.0, 8.0]
    # Unreachable: the fastest is taken, and the table says why.
    m = Net()
    rep = compress(m, {"a": "auto:speedup=100,ratios=2/4,candidates=lowrank/doped_kron"},
                   calibration=cal, timer=timer)
    sel = rep.layers[0].selection
    assert sel.chosen is min(sel.candidates, key=lambda c: (c.latency, c.error))
    assert "100x" in sel.fallback and sel.fallback in str(rep)


def test_sweep_candidates_are_measured_never_chosen():
    dense = n_params(Net().a)
    # the 2x fits as slow as the dense layer, the 4x ones (comparison only) 4x faster
    timer = fixed_timer(lambda m: 1.0 if n_params(m) > dense / 3 else 0.25)
    rep = compress(Net(), {"a": "auto:speedup=1.5,ratios=2,sweep=4/2"}, timer=timer)
    sel = rep.layers[0].selection
    assert sorted({(c.ratio, c.sweep) for c in sel.candidates}) == [(2.0, False), (4.0, True)]
    assert not sel.chosen.sweep and sel.chosen.ratio == 2.0 and "1.5x" in sel.fallback
    assert all(not c.admissible for c in sel.candidates if c.sweep)
    assert "(sweep)" in str(sel)


def test_selection_without_calibration_is_weights_only():
    model = Net()
    rep = compress(model, {"a": "auto:2:candidates=lowrank/doped_kron"}, timer=by_kind())
    sel = rep.layers[0].selection
    assert sel.error == "weights" and rep.layers[0].output_error is None
    expected = refit_errors(Net(), "a", None, [2], ("lowrank", "doped_kron"))
    assert {c.method for c in sel.candidates} == {"lowrank", "doped_kron"}
    for c in sel.candidates:
        assert c.error == pytest.approx(expected[(c.method, 2.0)][0], rel=1e-9)
    # without calibration the error is the squared relative Frobenius error of the weight
    assert sel.chosen.error == pytest.approx(rep.layers[0].relative_error ** 2, rel=1e-9)


def test_default_timer_measures_every_layer():
    """The real timer: one positive figure per layer, training flags restored (no timing
    assertion: the machine is shared)."""
    lin = nn.Linear(16, 12)
    low = lt.LowRankLinear(16, 12, 2).train()
    lin.train()
    got = interleaved_latency([lin, low], torch.randn(4, 16), repeats=2)
    assert len(got) == 2 and all(t > 0 for t in got)
    assert lin.training and low.training
    rep = compress(Net(), {"b": "auto:2:candidates=lowrank,repeats=1,rows=2"})
    c = rep.layers[0].selection.candidates[0]
    assert c.latency > 0 and c.speedup == pytest.approx(rep.layers[0].selection.dense_latency / c.latency)


def test_frontier_and_plot(tmp_path):
    model = Net()
    dense = n_params(model.b)
    rep = compress(model, {"b": "auto:speedup=1.5,ratios=2/4"},
                   timer=fixed_timer(lambda m: n_params(m) / dense))
    cands = rep.layers[0].selection.candidates
    front = frontier(cands)
    for c in cands:  # on the frontier iff no other one is both faster (or as fast) and better
        beaten = any(o is not c and o.speedup >= c.speedup and o.error < c.error for o in cands)
        assert (c in front) != beaten
    assert [c.speedup for c in front] == sorted(c.speedup for c in front)
    pytest.importorskip("matplotlib")
    lt.plot_frontier(rep, str(tmp_path / "f.png"), title="b")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no layer"):
        lt.plot_frontier(compress(Net(), {"a": "lowrank:2"}), str(tmp_path / "g.png"))
    for bad in (5, [5], [("b", 5)], {"b": None}):
        with pytest.raises(TypeError, match="selections: expected a CompressionReport"):
            lt.plot_frontier(bad, str(tmp_path / "h.png"))
    with pytest.raises(TypeError, match="path"):
        lt.plot_frontier(rep, 5)
    assert not (tmp_path / "h.png").exists()


# -- bad input --------------------------------------------------------------------------------

def test_bad_calibration_is_named():
    model = Net()
    cal = lt.calibrate(model, batches(), progress=False)  # every Linear, head included
    with pytest.raises(ValueError, match=r"calibration\['b'\]: no rule matches"):
        compress(model, {"a": "lowrank:2"}, calibration=cal)
    assert type(model.a) is nn.Linear  # checked before any fit
    compress(model, {"a": "lowrank:2:p=2"}, calibration=cal, strict=False)  # ignored then
    m = Net()
    bad = [({"nope": cal["a"]}, ValueError, r"calibration\['nope'\]: the model has no module"),
           ({"a": torch.eye(31)}, ValueError, r"calibration\['a'\]: input_gram: expected shape \(32, 32\)"),
           ({"b": cal["a"]}, ValueError, r"calibration\['b'\]: statistics of 32 features"),
           ({"a": torch.ones(32, 32, 2)}, TypeError, r"calibration\['a'\]: expected LayerStats"),
           ({"a": torch.full((32, 32), float("nan"))}, ValueError, r"calibration\['a'\].*NaN"),
           ({"a": -torch.ones(32)}, ValueError, r"calibration\['a'\]: input_scale"),
           ({"a": "gram"}, TypeError, r"calibration\['a'\]"),
           (42, TypeError, "calibration: expected a Calibration")]
    for calibration, kind, match in bad:
        with pytest.raises(kind, match=match):
            compress(m, {"a": "lowrank:2:p=2", "b": "lowrank:2:p=2"}, calibration=calibration)
    with pytest.raises(ValueError, match="least squares"):
        compress(m, {"a": "lowrank:2:p=1"}, calibration={"a": cal["a"]})
    emb = nn.Module()
    emb.e = nn.Embedding(10, 4)
    with pytest.raises(ValueError, match=r"calibration\['e'\]: the model has a Embedding"):
        compress(emb, {"e": "lowrank:2"}, calibration={"e": torch.eye(4)})


def test_bad_targets_are_named():
    m = Net()
    bad = [({"a": "auto:fast"}, ValueError, "not a number"),
           ({"a": {"method": "auto"}}, ValueError, "give a target"),
           ({"a": "auto:speedup=-1"}, ValueError, r"\['speedup'\]"),
           ({"a": "auto:speedup=inf"}, ValueError, r"\['speedup'\]"),
           ({"a": "auto:2:latency=3"}, ValueError, r"unknown option\(s\) \['latency'\]"),
           ({"a": "auto:2:ratios=4"}, ValueError, r"\['ratios'\]: the budgets of a speedup target"),
           ({"a": "auto:0.5"}, ValueError, r"\['ratio'\]"),
           ({"a": "auto:2:candidates=svd/lowrank"}, ValueError, "mixes"),
           ({"a": "auto:2:candidates=magic"}, ValueError, r"candidates"),
           ({"a": "auto:2:speedup=2,doping=false"}, ValueError, "do not go with the planner"),
           ({"a": "auto:2:rows=0"}, ValueError, r"\['rows'\]"),
           ({"a": "auto:2:sparse_share=1.5"}, ValueError, r"\['sparse_share'\]"),
           ({"a": "auto:2:ridge=-1"}, ValueError, r"\['ridge'\]"),
           ({"a": "auto:5000"}, ValueError, "no candidate fits"),
           ({"a": "lowrank_sparse:2:density=0.1"}, ValueError, "sparse_share"),
           ({"a": "lowrank_sparse::rank=2"}, ValueError, "'rank' needs 'density'")]
    for rules, kind, match in bad:
        with pytest.raises(kind, match=match):
            compress(m, rules, timer=by_kind())
    emb = nn.Module()
    emb.e = nn.Embedding(10, 4)
    with pytest.raises(ValueError, match="speedup.*Embedding"):
        compress(emb, {"e": "auto:2:speedup=2"})
    with pytest.raises(TypeError, match="lowrank_sparse"):
        compress(emb, {"e": "lowrank_sparse:2"})
    for timer, match in [(lambda layers, x: [1.0], "expected 4 positive"),
                         (lambda layers, x: [1.0, 0.0, 1.0, 1.0], "expected 4 positive"),
                         (lambda layers, x: [1.0, float("nan"), 1.0, 1.0], "expected 4 positive")]:
        with pytest.raises(ValueError, match=match):
            compress(m, {"a": "auto:2"}, timer=timer)
    with pytest.raises(TypeError, match="timer"):
        compress(m, {"a": "auto:2"}, timer=3)
    assert type(m.a) is nn.Linear


def test_parse_speedup_rule():
    assert parse_rule("*.dense=auto:speedup=1.3") == ("*.dense", {"method": "auto", "speedup": 1.3})
    assert parse_rule("x=auto:2:speedup=1.2,rows=32") == \
        ("x", {"method": "auto", "ratio": 2, "speedup": 1.2, "rows": 32})


def test_planner_path_kept_for_linear_with_planner_options():
    m = Net()
    rep = compress(m, {"a": "auto:4:candidates=svd,doping=false"})
    assert rep.layers[0].plan is not None and rep.layers[0].selection is None


# -- round trip -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(KINDS))
def test_state_dict_round_trip(method):
    model = Net()
    data = batches()
    cal = lt.calibrate(model, data, ["a", "b"], progress=False)
    rep = compress(model, {"a": f"auto:2:candidates={method}", "b": "auto:3:candidates=lowrank"},
                   calibration=cal, timer=by_kind())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = Net()
    for name in ("a", "b"):
        new = getattr(model, name)
        kw = dict(bias=new.bias is not None, dtype=torch.float64)
        if isinstance(new, lt.DopedKroneckerLinear):
            blank = lt.DopedKroneckerLinear(new.in_features, new.out_features, new.a_shape,
                                            new.b_shape, 0.0, rank=new.rank, **kw)
        elif isinstance(new, lt.LowRankSparseLinear):
            blank = lt.LowRankSparseLinear(new.in_features, new.out_features, new.rank, **kw)
        else:
            blank = lt.LowRankLinear(new.in_features, new.out_features, new.rank, **kw)
        setattr(fresh, name, blank)
    fresh.load_state_dict(torch.load(buf))
    x = torch.cat(data)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert type(model.a) is KINDS[method]
    d = json.loads(json.dumps(rep.to_dict()))
    cands = d["layers"][0]["selection"]["candidates"]
    assert [c["method"] for c in cands] == [method] and cands[0]["chosen"]
    text = str(rep)
    assert "err_C" in text and "<- chosen" in text and "a: auto (ratio 2" in text
    assert np.isfinite(d["layers"][1]["output_error"])
