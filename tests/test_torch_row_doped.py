"""Row-doped torch layers, compress "auto" (the planner) and the ``plan`` command line.

Layout:
  layers          RowDopedEmbedding / RowDopedLinear against RowDoped.lookup / reconstruct,
                  parameter counts, no dense table in a forward, gradients, padding_idx
  state           state_dict round trips (same and other sizes), to_dict, to_row_doped
  fitting         from_embedding / from_linear through row_doped_fit
  compress auto   tiny BERT word embeddings, Linear with bias, layer choice, weights options
  command line    compress with an auto rule, plan (table, --ratios, json, .pt inputs, plot)
  bad input       every rejection names its argument
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import lpfast  # noqa: E402
import lpfast.torch as lt  # noqa: E402
from lpfast.__main__ import main  # noqa: E402
from lpfast.torch import RowDopedEmbedding, RowDopedLinear, compress  # noqa: E402
from lpfast.torch.compress import METHODS  # noqa: E402

from test_torch_compress import Tiny, check_report_exact, tiny_bert  # noqa: E402
from test_torch_layers import roundtrip_state_dict  # noqa: E402

DTYPES = [torch.float32, torch.float64]
NP = {torch.float32: np.float32, torch.float64: np.float64}
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}
N, D = 120, 12
FITS = {"svd": {}, "lp": {"p": 1.0}, "projective": {"n_subspaces": 3, "seed": 0, "n_init": 2}}


def matrix(n=N, d=D, dtype=np.float64, seed=0):
    """Rows near a 3-dim subspace plus a few far rows (so doping stores some)."""
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + 0.1 * rng.standard_normal((n, d))
    E[rng.choice(n, 6, replace=False)] += 4 * rng.standard_normal((6, d))
    return E.astype(dtype)


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


# -- layers ----------------------------------------------------------------------------------

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


# -- state -----------------------------------------------------------------------------------

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
    with pytest.raises(ValueError, match="exact_indices"):
        layer.load_state_dict(dict(sd, exact_indices=sd["exact_indices"].double()))
    with pytest.raises(RuntimeError, match="U"):  # another kind: missing/unexpected keys
        RowDopedEmbedding(N, D, 2).load_state_dict(sd)
    assert torch.equal(layer.exact_indices, torch.from_numpy(res.exact_indices))  # untouched


# -- fitting ---------------------------------------------------------------------------------

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


# -- compress "auto" ---------------------------------------------------------------------------

def zipf_counts(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.floor(1e5 / np.arange(1, n + 1) ** 1.1)[rng.permutation(n)]


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


# -- command line ----------------------------------------------------------------------------

def test_cli_compress_auto(tmp_path, capsys):
    src, dst = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save(Tiny(), src)
    np.save(tmp_path / "counts.npy", zipf_counts(300))
    code = main(["compress", str(src), str(dst), "--threads", "1", "--rule",
                 f"emb=auto:8:candidates=svd/lp:1,counts={tmp_path / 'counts.npy'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[1/1] emb" in out and "plan [4/4] " in out and "plan: best" in out
    assert "compression plan for a 300 x 32 matrix at ratio 8" in out
    loaded = torch.load(dst, weights_only=False)
    assert isinstance(loaded.emb, (RowDopedEmbedding, lt.LowRankEmbedding))
    assert "_lpfast_plan" not in loaded.emb.__dict__  # the plan is reported, not saved
    assert loaded(torch.randint(0, 300, (2, 5))).shape == (2, 10)


def test_auto_sweep_and_cli_compress_plot(tmp_path, capsys):
    model = Tiny()
    report = compress(model, {"emb": "auto:4:candidates=svd/lp:1,sweep=2/8/4"})
    row = report.layers[0]
    assert [p.ratio for p in row.sweep] == [2, 4, 8] and row.sweep[1] is row.plan
    assert [p["ratio"] for p in json.loads(json.dumps(row.to_dict()))["sweep"]] == [2, 4, 8]
    with pytest.raises(ValueError, match="sweep"):
        compress(Tiny(), {"emb": "auto:4:sweep=0.5"})

    pytest.importorskip("matplotlib")
    src, dst, png = tmp_path / "in.pt", tmp_path / "out.pt", tmp_path / "auto.png"
    torch.save(Tiny(), src)
    code = main(["compress", str(src), str(dst), "--quiet", "--plot", str(png),
                 "--plot-ratios", "3,6", "--rule", "emb=auto:4:candidates=svd",
                 "--rule", "body.2=auto:2:candidates=svd/lp:1.5"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("emb", "body.2"):
        path = tmp_path / f"auto-{name}.png"
        assert f"plot: {path}" in out and path.read_bytes()[:4] == b"\x89PNG"
    assert main(["compress", str(src), str(dst), "--plot", str(png), "--rule", "emb=lowrank:4"]) == 2
    assert "no --rule uses auto" in capsys.readouterr().err


def test_cli_plan_table_ratios_json(tmp_path, capsys):
    E = matrix(200, 16, np.float32)
    counts = zipf_counts(200)
    np.save(tmp_path / "E.npy", E)
    np.save(tmp_path / "c.npy", counts)
    out_json = tmp_path / "plan.json"
    code = main(["plan", str(tmp_path / "E.npy"), "--ratio", "8", "--ratios", "4,8",
                 "--counts", str(tmp_path / "c.npy"), "--candidates", "svd,lp:1.5,projective:2",
                 "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    assert "200 x 16 float32; usage-weighted planning at ratio 4, 8" in out
    assert "compression plan for a 200 x 16 matrix at ratio 4" in out
    assert "compression plan for a 200 x 16 matrix at ratio 8" in out
    assert "[6/6] " in out and "error by ratio" in out
    data = json.loads(out_json.read_text())
    assert [p["ratio"] for p in data] == [4, 8]
    # same seed, same plan as the library call
    want = lpfast.plan_compression(E, 8, weights=lpfast.usage_weights(counts), seed=0,
                                   candidates=["svd", "lp:1.5", "projective:2"])
    got = data[1]["rows"]
    assert [r["candidate"] for r in got] == [r["candidate"] for r in want.rows]
    assert [r["n_params"] for r in got] == [r["n_params"] for r in want.rows]
    np.testing.assert_allclose([r["error"] for r in got], [r["error"] for r in want.rows], rtol=1e-6)
    assert main(["plan", str(tmp_path / "E.npy"), "--ratio", "6", "--markdown", "--quiet",
                 "--candidates", "svd", "--doping", "only"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | svd+doped |" in out.replace("  ", " ") and "[1/1]" not in out


def test_cli_plan_torch_inputs(tmp_path, capsys):
    model = Tiny()
    sd_path, model_path = tmp_path / "sd.pt", tmp_path / "model.pt"
    torch.save(model.state_dict(), sd_path)
    torch.save(model, model_path)
    args = ["--ratio", "4", "--candidates", "svd", "--quiet"]
    assert main(["plan", f"{sd_path}:emb", *args]) == 0  # ".weight" may be left out
    assert "300 x 32" in capsys.readouterr().out
    assert main(["plan", f"{sd_path}:body.2.weight", *args]) == 0
    assert "32 x 48" in capsys.readouterr().out
    assert main(["plan", str(sd_path), *args]) == 2  # several 2-d entries: name one
    assert "name one" in capsys.readouterr().err
    assert main(["plan", f"{sd_path}:nothing", *args]) == 2
    assert "no entry 'nothing'" in capsys.readouterr().err
    assert main(["plan", f"{model_path}:emb", *args]) == 2  # a pickled model needs consent
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["plan", f"{model_path}:emb", "--allow-pickle", *args]) == 0
    torch.save(model.emb.weight.detach(), tmp_path / "t.pt")
    assert main(["plan", str(tmp_path / "t.pt"), *args]) == 0


def test_cli_plan_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "E.npy", matrix(150, 12))
    png = tmp_path / "plot.png"
    code = main(["plan", str(tmp_path / "E.npy"), "--ratios", "3,6", "--candidates", "svd,lp:1",
                 "--plot", str(png), "--quiet"])
    assert code == 0 and f"plot: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_plan_errors(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "E.npy", matrix(100, 8))
    np.save(tmp_path / "c.npy", zipf_counts(99))
    E = str(tmp_path / "E.npy")
    cases = [([E], "--ratio"), ([E, "--ratio", "1"], "> 1"), ([E, "--ratios", "4,x"], "--ratios"),
             ([str(tmp_path / "none.npy"), "--ratio", "4"], "no such file"),
             ([E, "--ratio", "4", "--counts", str(tmp_path / "c.npy")], "99 counts for 100 rows"),
             ([E + ":x", "--ratio", "4"], "drop ':x'"),
             ([E, "--ratio", "4", "--candidates", "magic"], "candidates"),
             ([E, "--ratio", "1000"], "ratio")]
    for argv, msg in cases:
        assert main(["plan", *argv]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["plan", E, "--ratio", "4", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "lpfast[plot]" in err
    assert not (tmp_path / "p.png").exists()
    src = tmp_path / "in.pt"
    torch.save(Tiny(), src)
    assert main(["compress", str(src), str(tmp_path / "o.pt"), "--plot", str(tmp_path / "p.png"),
                 "--rule", "emb=auto:4"]) == 2  # checked before any fitting
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


# -- bad input -------------------------------------------------------------------------------

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
