"""The command line on torch models: ``python -m lpfast compress`` (fixed methods, "auto",
--plot) and ``python -m lpfast plan`` (tables, --ratios, JSON, torch inputs, plots, errors).

All in-process (``lpfast.__main__.main``) on small saved models and arrays.
test_cli_plan_table_ratios_json and test_cli_plan_plot need NumPy only.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lpfast  # noqa: E402
import lpfast.torch as lt  # noqa: E402
from lpfast.__main__ import main  # noqa: E402
from lpfast.torch import RowDopedEmbedding  # noqa: E402

from _torch_helpers import Tiny, matrix, n_params, zipf_counts  # noqa: E402


# -- compress ------------------------------------------------------------------------------

def test_cli_compress(tmp_path, capsys):
    model = Tiny()
    src, dst, rep = tmp_path / "in.pt", tmp_path / "out.pt", tmp_path / "report.json"
    torch.save(model, src)
    code = main(["compress", str(src), str(dst), "--rule", "emb=lowrank:4:p=1.0",
                 "--rule", "body.0=doped_kron:3:a_shape=6x4,b_shape=8x8",
                 "--report-json", str(rep), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[1/2] emb" in out and "[2/2] body.0" in out and "model:" in out
    loaded = torch.load(dst, weights_only=False)
    assert isinstance(loaded.emb, lt.LowRankEmbedding)
    assert isinstance(loaded.body[0], lt.DopedKroneckerLinear)
    data = json.loads(rep.read_text())
    assert [r["name"] for r in data["layers"]] == ["emb", "body.0"]
    assert data["model_params_after"] == n_params(loaded)
    idx = torch.randint(0, 300, (2, 5))
    assert loaded(idx).shape == (2, 10)


def test_cli_errors(tmp_path, capsys):
    src = tmp_path / "in.pt"
    torch.save(Tiny().state_dict(), src)
    assert main(["compress", str(src), str(tmp_path / "o.pt"), "--rule", "emb=lowrank:2"]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err
    torch.save(Tiny(), src)
    assert main(["compress", str(src), str(tmp_path / "o.pt"), "--rule", "emb"]) == 2
    assert "--rule" in capsys.readouterr().err
    assert main(["compress", str(src), str(tmp_path / "o.pt"), "--rule", "zzz=lowrank:2"]) == 2
    assert "matches no" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_cli_default_is_still_the_demo(monkeypatch):
    import lpfast.__main__ as cli

    called = []
    monkeypatch.setattr(cli, "demo", lambda args: called.append(args.command) or 0)
    assert cli.main([]) == 0 and called == ["demo"]


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


def test_cli_compress_auto_plot(tmp_path, capsys):
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


# -- plan ----------------------------------------------------------------------------------

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
